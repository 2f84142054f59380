"""inbound messages remembered; subscriber ids never reused on sqlite

Revision ID: 206b5809081c
Revises: 555dde076f85
Create Date: 2026-12-03 18:49:34.159565
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "206b5809081c"
down_revision: str | Sequence[str] | None = "555dde076f85"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inboundmessage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("result", sa.String(length=40), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("inboundmessage", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inboundmessage_token_hash"), ["token_hash"], unique=False
        )

    if op.get_bind().dialect.name == "sqlite":
        # AUTOINCREMENT: a removed subscriber's id is never given to the next one (their signed
        # links must not act on a stranger). SQLite can only add it by copying the table;
        # PostgreSQL sequences never go back.
        with op.batch_alter_table(
            "subscriber", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    with op.batch_alter_table("inboundmessage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inboundmessage_token_hash"))

    op.drop_table("inboundmessage")
