"""subscriber link keys: signed links bound to the subscription they were made for

Revision ID: 63bf4fa1fcb4
Revises: d8f7eca4e78b
Create Date: 2026-12-04 16:27:21.737131
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "63bf4fa1fcb4"
down_revision: str | Sequence[str] | None = "d8f7eca4e78b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite copies the table for these changes: the copy keeps AUTOINCREMENT (206b5809081c).
_SQLITE_TABLE = {"sqlite_autoincrement": True}


@contextmanager
def _subscriber_ids_kept() -> Iterator[None]:
    """On SQLite, the highest subscriber id ever given survives the table's copy, which would
    otherwise restart after the highest id left and give a removed subscriber's id again."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    given = bind.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = 'subscriber'"
    ).scalar()
    yield
    if given is not None:
        bind.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'subscriber'", (given,)
        )
        bind.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'subscriber', ? WHERE NOT EXISTS "
            "(SELECT 1 FROM sqlite_sequence WHERE name = 'subscriber')",
            (given,),
        )


def upgrade() -> None:
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_key", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("confirm_key", sa.String(length=24), nullable=True))

    subscriber = sa.table(
        "subscriber",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("link_key", sa.String()),
    )
    bind = op.get_bind()
    # Links already mailed carry no key. A subscription that is still the one they were made
    # for keeps them working: its key is "", the key such a link reads as. An unsubscribed one
    # has ended: a random key, so its old links (a confirmation link posted again above all)
    # never act on it, nor on a later subscription of the address.
    bind.execute(
        subscriber.update().where(subscriber.c.status != "unsubscribed").values(link_key="")
    )
    ended = bind.execute(
        sa.select(subscriber.c.id).where(subscriber.c.status == "unsubscribed")
    ).scalars()
    keys = [{"row": row, "key": secrets.token_urlsafe(9)} for row in ended]
    if keys:
        bind.execute(
            subscriber.update()
            .where(subscriber.c.id == sa.bindparam("row"))
            .values(link_key=sa.bindparam("key")),
            keys,
        )

    with (
        _subscriber_ids_kept(),
        op.batch_alter_table("subscriber", schema=None, table_kwargs=_SQLITE_TABLE) as batch_op,
    ):
        batch_op.alter_column("link_key", existing_type=sa.String(length=24), nullable=False)


def downgrade() -> None:
    with (
        _subscriber_ids_kept(),
        op.batch_alter_table("subscriber", schema=None, table_kwargs=_SQLITE_TABLE) as batch_op,
    ):
        batch_op.drop_column("confirm_key")
        batch_op.drop_column("link_key")
