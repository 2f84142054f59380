"""Every table of the store: papers, subscribers, deliveries and what they held, feedback, runs,
mail read in, bounces and suppressions."""

from __future__ import annotations

import datetime as dt
import secrets
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, LargeBinary, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware datetimes as UTC and always gives back aware UTC datetimes.

    SQLite has no time zones; without this a round trip silently turns aware values naive.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None or value.tzinfo is dt.UTC:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _utc_column(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json_list() -> Any:
    return Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Paper(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=200)
    title: str
    abstract: str = ""
    authors: list[str] = _json_list()
    published: dt.datetime | None = _utc_column()
    first_seen: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    # Indexed: the planner and every worker batch ask when papers last changed (max of it).
    updated_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    url: str | None = None
    categories: list[str] = _json_list()
    upvotes: int | None = None
    comments: int | None = None
    github_repo: str | None = None
    github_stars: int | None = None
    ai_summary: str | None = None
    ai_keywords: list[str] = _json_list()
    comment: str | None = None
    sources: list[str] = _json_list()


class PaperEmbedding(SQLModel, table=True):
    """A paper's sentence embedding under one encoder (digest/encoder.py), stored as int8.

    `model` is the encoder's name@version: vectors of two models are never mixed, a new model
    simply finds every paper missing. The unit vector is kept as int8 with one float scale
    (value = int8 * scale): 384 bytes + the scale per paper, cosine to the float32 vector
    above 0.9999. No foreign key, like DeliveryItem: written in bulk after ingestion, and
    looked up only by (model, paper).
    """

    __tablename__ = "paper_embedding"

    model: str = Field(primary_key=True, max_length=100)
    paper_id: str = Field(primary_key=True, max_length=200)
    dim: int
    scale: float
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SubscriberStatus(StrEnum):
    PENDING = "pending"  # signed up, not yet confirmed: never mailed a digest
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    SUPPRESSED = "suppressed"  # repeated permanent delivery failures


class Frequency(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


def new_link_key() -> str:
    """A fresh key for a subscription's signed links: 72 random bits, URL-safe."""
    return secrets.token_urlsafe(9)


class Subscriber(SQLModel, table=True):
    # Signed links name a subscriber by id: an id is never given again, on SQLite too (without
    # AUTOINCREMENT it reuses the highest id after a removal, and old links would act on the
    # newcomer). PostgreSQL's sequences never go back.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(index=True, unique=True, max_length=320)
    status: str = Field(default=SubscriberStatus.PENDING.value, index=True)
    topics: list[str] = _json_list()
    exclude: list[str] = _json_list()
    frequency: str = Field(default=Frequency.DAILY.value)
    weekly_day: int = Field(default=0, ge=0, le=6)  # Monday is 0, used when frequency is weekly
    send_hour: int = Field(default=7, ge=0, le=23)
    timezone: str = Field(default="UTC", max_length=64)
    paused_until: dt.date | None = None
    bounce_count: int = 0
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    confirmed_at: dt.datetime | None = _utc_column()
    unsubscribed_at: dt.datetime | None = _utc_column()
    # Every signed link carries the key of the subscription it was made for and acts only while
    # that is still the subscriber's key (digest/links.py). A new one is drawn when the
    # subscription ends (unsubscribe) and when it starts again (confirmed after being inactive),
    # so links of an earlier subscription never act on a later one. "" only on rows from before
    # link keys: their links, mailed without a key, keep working until then.
    link_key: str = Field(default_factory=new_link_key, max_length=24)
    # The one confirmation link that may still be used: each request draws a new one, and
    # confirming or unsubscribing clears it, so a confirmation link works once.
    confirm_key: str | None = Field(default=None, max_length=24)


class DeliveryState(StrEnum):
    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"  # nothing worth sending that day: the reason says why
    FAILED = "failed"
    # The connection dropped after the whole message was handed over, before the server's
    # answer: it may or may not have been delivered. Not sent again unless an operator
    # releases it (or DIGEST_UNCONFIRMED says so); the reason names the server, step and time.
    UNCONFIRMED = "unconfirmed"


class Delivery(SQLModel, table=True):
    """One digest for one subscriber on one digest date; the unique row is the send claim.

    Each row is updated twice per send (claimed, then sent), 100,000 times a day: only columns
    that never change are indexed (id, subscriber and date), and pages keep room for the new
    versions, so that PostgreSQL updates in place (HOT) without touching any index. The
    sweeper finds its rows by recent digest date, then by state.
    """

    __table_args__ = (
        UniqueConstraint("subscriber_id", "digest_date", name="uq_delivery_day"),
        {"postgresql_with": {"fillfactor": 75}},
    )

    id: int | None = Field(default=None, primary_key=True)
    # Looked up through uq_delivery_day (subscriber_id, digest_date).
    subscriber_id: int = Field(foreign_key="subscriber.id")
    digest_date: dt.date = Field(index=True)
    state: str = Field(default=DeliveryState.PLANNED.value)
    reason: str | None = None
    message_id: str | None = Field(default=None, max_length=255)
    attempts: int = 0
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    sent_at: dt.datetime | None = _utc_column()
    # A worker owns a "sending" row until its lease runs out; then another may take it over.
    lease_until: dt.datetime | None = _utc_column()
    # A temporarily failed delivery is tried again from this moment; None means never again.
    retry_at: dt.datetime | None = _utc_column()
    # The fencing token of the claim that owns a "sending" row: outcomes and lease renewals
    # name it, so a sender whose lease ran out can never mark (or keep) a row taken over since.
    claim_token: str | None = Field(default=None, max_length=32)
    # Who holds the claim (worker host and process), for `digest why`.
    claimed_by: str | None = Field(default=None, max_length=255)


class DeliveryItem(SQLModel, table=True):
    """A paper a delivery contained, with the score and reason it was picked for."""

    # No foreign keys: checking them locked the delivery and paper rows for each of a digest's
    # ten items (and two workers locking one paper made a multixact), a third of the database's
    # work per message. Items are written only for a delivery just claimed, with papers of the
    # stored corpus, and a subscriber's deletion removes their items first. Nothing looks items
    # up by paper, so the primary key (delivery, paper) is their only index.
    delivery_id: int = Field(primary_key=True)
    paper_id: str = Field(primary_key=True)
    rank: int
    score: float
    why: str


class Feedback(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("subscriber_id", "paper_id", name="uq_feedback"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    paper_id: str = Field(foreign_key="paper.id")
    value: int  # +1 liked, -1 disliked
    created_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Run(SQLModel, table=True):
    """A record of one ingest, plan or send run, so an operator can ask what happened and why."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # "ingest", "plan" or "send"
    started_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    finished_at: dt.datetime | None = _utc_column()
    status: str = "running"  # running, ok, partial, failed
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class InboundMessage(SQLModel, table=True):
    """A mailed request already acted on (or refused), so a mailbox read twice changes nothing:
    its fingerprint (Message-ID, or the raw bytes when it has none, with its tokens) and the
    hash of the token it used. Only hashes are kept: a token is a signed link."""

    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(unique=True, max_length=64)
    token_hash: str | None = Field(default=None, index=True, max_length=64)
    result: str = Field(max_length=40)
    processed_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Bounce(SQLModel, table=True):
    """A bounce that came back by mail, and the delivery it failed: one per delivery (a second
    report of the same failure changes nothing). Kept when a suppression is lifted: the history
    of why an address was suppressed."""

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id", unique=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    # The failed recipient the report named (not always the subscriber's address: forwarding).
    address: str = Field(max_length=320)
    # Hard: the address is refused for good (5.x.x), counted towards suppression like an SMTP
    # 5xx answer; soft: the server gave up for now (4.x.x: mailbox full, timed out).
    hard: bool
    status: str | None = Field(default=None, max_length=16)  # RFC 3463 code, e.g. 5.1.1
    reason: str = Field(max_length=500)
    # How the bounce was tied to the delivery: "token" (its bounce address) or "address".
    tied_by: str = Field(max_length=20)
    received_at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class SuppressionEvent(SQLModel, table=True):
    """An address suppressed (after repeated hard bounces) or the suppression lifted by an
    operator, with the failure count at that moment: the subscriber's count starts again from
    zero when lifted, this row keeps it."""

    __tablename__ = "suppression_event"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    action: str = Field(max_length=20)  # "suppressed" or "lifted"
    failures: int
    reason: str = Field(max_length=500)
    at: dt.datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
