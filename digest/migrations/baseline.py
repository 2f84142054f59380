"""The schema the first revision creates: the tables as models.py made them at 0bca3dd.

Frozen on purpose: models.py moves on and each change comes with a revision, but this stays
what the baseline revision creates and what a database made before migrations is compared to
(digest.db.adopt_unversioned, digest.migrations.adopt) before it is stamped with the baseline.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

# Indexes and foreign keys of the shapes made before migrations, which the baseline no longer
# has (commits 5d82650 .. e74cfc5): an adopted database drops them.
OLD_INDEXES = frozenset(
    {
        "ix_delivery_subscriber_id",
        "ix_delivery_state",
        "ix_delivery_retry_at",
        "ix_deliveryitem_paper_id",
    }
)
OLD_FOREIGN_KEY_TABLES = frozenset({"deliveryitem"})
# Columns the shapes before 5d82650 lack: added empty (nullable) when such a database is adopted.
LATER_COLUMNS = frozenset({("delivery", "lease_until"), ("delivery", "retry_at")})
DELIVERY_FILLFACTOR = 75


def _utc(name: str, *, nullable: bool = True, index: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable, index=index)


def baseline_metadata() -> MetaData:
    metadata = MetaData()
    _paper_and_subscriber(metadata)
    _deliveries(metadata)
    _feedback_and_runs(metadata)
    return metadata


def _paper_and_subscriber(metadata: MetaData) -> None:
    Table(
        "paper",
        metadata,
        Column("id", String(200), primary_key=True),
        Column("title", String(), nullable=False),
        Column("abstract", String(), nullable=False),
        Column("authors", JSON(), nullable=False),
        _utc("published"),
        _utc("first_seen", nullable=False, index=True),
        _utc("updated_at", nullable=False),
        Column("url", String()),
        Column("categories", JSON(), nullable=False),
        Column("upvotes", Integer()),
        Column("comments", Integer()),
        Column("github_repo", String()),
        Column("github_stars", Integer()),
        Column("ai_summary", String()),
        Column("ai_keywords", JSON(), nullable=False),
        Column("comment", String()),
        Column("sources", JSON(), nullable=False),
    )
    Table(
        "subscriber",
        metadata,
        Column("id", Integer(), primary_key=True),
        Column("email", String(320), nullable=False),
        Column("status", String(), nullable=False),
        Column("topics", JSON(), nullable=False),
        Column("exclude", JSON(), nullable=False),
        Column("frequency", String(), nullable=False),
        Column("weekly_day", Integer(), nullable=False),
        Column("send_hour", Integer(), nullable=False),
        Column("timezone", String(64), nullable=False),
        Column("paused_until", Date()),
        Column("bounce_count", Integer(), nullable=False),
        _utc("created_at", nullable=False),
        _utc("confirmed_at"),
        _utc("unsubscribed_at"),
        Index("ix_subscriber_email", "email", unique=True),
        Index("ix_subscriber_status", "status"),
    )


def _deliveries(metadata: MetaData) -> None:
    Table(
        "delivery",
        metadata,
        Column("id", Integer(), primary_key=True),
        Column("subscriber_id", Integer(), ForeignKey("subscriber.id"), nullable=False),
        Column("digest_date", Date(), nullable=False, index=True),
        Column("state", String(), nullable=False),
        Column("reason", String()),
        Column("message_id", String(255)),
        Column("attempts", Integer(), nullable=False),
        _utc("created_at", nullable=False),
        _utc("updated_at", nullable=False),
        _utc("sent_at"),
        _utc("lease_until"),
        _utc("retry_at"),
        UniqueConstraint("subscriber_id", "digest_date", name="uq_delivery_day"),
        postgresql_with={"fillfactor": DELIVERY_FILLFACTOR},
    )
    Table(
        "deliveryitem",
        metadata,
        Column("delivery_id", Integer(), primary_key=True, autoincrement=False),
        Column("paper_id", String(), primary_key=True),
        Column("rank", Integer(), nullable=False),
        Column("score", Float(), nullable=False),
        Column("why", String(), nullable=False),
    )


def _feedback_and_runs(metadata: MetaData) -> None:
    Table(
        "feedback",
        metadata,
        Column("id", Integer(), primary_key=True),
        Column("subscriber_id", Integer(), ForeignKey("subscriber.id"), nullable=False),
        Column("paper_id", String(), ForeignKey("paper.id"), nullable=False),
        Column("value", Integer(), nullable=False),
        _utc("created_at", nullable=False),
        UniqueConstraint("subscriber_id", "paper_id", name="uq_feedback"),
        Index("ix_feedback_subscriber_id", "subscriber_id"),
    )
    Table(
        "run",
        metadata,
        Column("id", Integer(), primary_key=True),
        Column("kind", String(), nullable=False, index=True),
        _utc("started_at", nullable=False, index=True),
        _utc("finished_at"),
        Column("status", String(), nullable=False),
        Column("summary", JSON(), nullable=False),
    )
