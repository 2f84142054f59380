"""Baseline: the schema of models.py at 0bca3dd, the last one made without migrations.

Revision ID: 555dde076f85
Revises:
Create Date: 2026-12-03

A database made before migrations is not created again: digest.db adopts it (brings an older
shape to this one, then stamps this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from digest.migrations.baseline import baseline_metadata

revision: str = "555dde076f85"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind(), checkfirst=False)
