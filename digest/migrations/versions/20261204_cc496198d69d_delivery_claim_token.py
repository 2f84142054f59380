"""delivery claim token: a fencing token and the holder of each claim; the `unconfirmed` state
needs no column (states are strings), but an older code base does not know it.

Revision ID: cc496198d69d
Revises: fb9b17313090
Create Date: 2026-12-04 16:25:21.356359
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cc496198d69d"
down_revision: str | Sequence[str] | None = "fb9b17313090"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=255), nullable=True))


def downgrade() -> None:
    # The code before this revision has no "unconfirmed": those become failed for good, with
    # their reason, which is what the earlier code would have shown for an unknown outcome.
    op.execute("UPDATE delivery SET state = 'failed', retry_at = NULL WHERE state = 'unconfirmed'")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claim_token")
