"""bounces by mail and suppression events

`bounce`: each bounce read from the bounce mailbox, tied to its delivery (one per delivery);
`suppression_event`: an address suppressed after hard bounces, or the suppression lifted.
Two new tables: nothing existing changes, and the downgrade drops them with their rows.

Revision ID: d8f7eca4e78b
Revises: cc496198d69d
Create Date: 2026-12-04 16:30:50.880774
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d8f7eca4e78b"
down_revision: str | Sequence[str] | None = "cc496198d69d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "suppression_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscriber.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("suppression_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_suppression_event_subscriber_id"), ["subscriber_id"], unique=False
        )

    op.create_table(
        "bounce",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("tied_by", sa.String(length=20), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscriber.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id"),
    )
    with op.batch_alter_table("bounce", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bounce_subscriber_id"), ["subscriber_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("bounce", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bounce_subscriber_id"))

    op.drop_table("bounce")
    with op.batch_alter_table("suppression_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_suppression_event_subscriber_id"))

    op.drop_table("suppression_event")
