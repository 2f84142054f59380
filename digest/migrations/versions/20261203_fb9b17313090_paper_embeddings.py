"""paper embeddings

Revision ID: fb9b17313090
Revises: 206b5809081c
Create Date: 2026-12-03 18:58:26.651126
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fb9b17313090"
down_revision: str | Sequence[str] | None = "206b5809081c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "paper_embedding",
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("paper_id", sa.String(length=200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("scale", sa.Float(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model", "paper_id"),
    )


def downgrade() -> None:
    op.drop_table("paper_embedding")
