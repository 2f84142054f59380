"""paper.updated_at indexed: the planner and each worker batch ask `max(paper.updated_at)` (has
anything been stored since a digest was skipped, since the corpus was prepared?); without the
index that is a scan of every paper (75,000 after a corpus import).

Revision ID: 3f0c2a9d7b41
Revises: 63bf4fa1fcb4
Create Date: 2026-12-05 00:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "3f0c2a9d7b41"
down_revision: str | Sequence[str] | None = "63bf4fa1fcb4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_paper_updated_at", "paper", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_paper_updated_at", table_name="paper")
