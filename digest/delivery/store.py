"""Where deliveries are written: one interface (listmonk's store idea), one implementation per
database, so the delivery code never asks which database it runs on.

The statements themselves are defined once, in digest.delivery.state; a store decides how to
run them fast on its database: PostgreSQL takes a page of planned rows as three arrays, a
digest's items through COPY, and "sent" marks as a server-side prepared statement run through
libpq; SQLite takes the portable SQLAlchemy forms.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import one_of
from digest.delivery import state
from digest.delivery.outcomes import Claim, OutcomeWriter, holder_name
from digest.models import Delivery, DeliveryItem, DeliveryState, UTCDateTime

log = logging.getLogger(__name__)
T = TypeVar("T")

# A planned delivery as the planner hands it over: subscriber, digest date, Message-ID.
PlannedRow = tuple[int, dt.date, str]


class DeliveryStore:
    """The portable parts; the subclasses run the hot statements their database's fast way."""

    def insert_planned(
        self, session: Session, rows: list[PlannedRow], now: dt.datetime
    ) -> list[int]:
        """Insert planned deliveries; rows that exist already (same subscriber and date) are
        left alone. Returns the new ids. The caller commits."""
        raise NotImplementedError

    def insert_items(self, session: Session, rows: list[dict[str, Any]]) -> None:
        """Insert a batch's delivery items in the session's transaction. The caller commits."""
        raise NotImplementedError

    def refresh_statistics(self, session: Session) -> None:
        """Tell the query planner how many deliveries there are now (after a big planner run)."""

    def claim(
        self,
        session: Session,
        delivery_ids: Sequence[int],
        *,
        now: dt.datetime,
        settings: Settings,
        retry_now: bool = False,
    ) -> Claim:
        """Atomically take the deliveries among these that are free to send (see
        `state.claimable`), and commit."""
        lease_until = now + dt.timedelta(seconds=settings.lease_seconds)
        token = secrets.token_hex(16)
        if not delivery_ids:
            return Claim([], lease_until, token)
        statement = state.claim_statement(
            one_of(session, col(Delivery.id), delivery_ids),
            now=now,
            settings=settings,
            retry_now=retry_now,
            token=token,
            holder=holder_name(),
        )
        claimed = [row[0] for row in session.execute(statement)]
        session.commit()
        return Claim(claimed, lease_until, token)

    @contextmanager
    def outcomes(
        self, session: Session, claim: Claim, settings: Settings
    ) -> Iterator[OutcomeWriter]:
        """A writer for the outcomes of `claim`, on its own autocommit connection."""
        engine = session.get_bind()
        if not isinstance(engine, Engine):
            raise TypeError("outcomes are written through an engine's connection")
        writer = self.writer(
            engine,
            claim,
            retry_seconds=settings.db_retry_seconds,
            durable=settings.outcome_commit == "durable",
        )
        try:
            yield writer
        finally:
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001 - the outcomes are written already
                log.warning("outcome_writer_close_failed error=%s", exc.__class__.__name__)

    def writer(
        self,
        engine: Engine,
        claim: Claim,
        *,
        retry_seconds: float = 120.0,
        durable: bool = True,
    ) -> OutcomeWriter:
        return OutcomeWriter(engine, claim, retry_seconds=retry_seconds, durable=durable)


class SQLiteDeliveryStore(DeliveryStore):
    def insert_planned(
        self, session: Session, rows: list[PlannedRow], now: dt.datetime
    ) -> list[int]:
        if not rows:
            return []
        table = Delivery.__table__  # type: ignore[attr-defined]
        statement = (
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=["subscriber_id", "digest_date"])
            .returning(table.c.id)
        )
        values = [
            {
                "subscriber_id": sid,
                "digest_date": day,
                "message_id": message_id,
                "state": DeliveryState.PLANNED.value,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for sid, day, message_id in rows
        ]
        ids: list[int] = []
        for start in range(0, len(values), 2000):
            ids.extend(row[0] for row in session.execute(statement, values[start : start + 2000]))
        return ids

    def insert_items(self, session: Session, rows: list[dict[str, Any]]) -> None:
        if rows:
            session.execute(insert(DeliveryItem.__table__), rows)  # type: ignore[attr-defined]


# A page of planned deliveries as three arrays, the same statement for every page size. The
# multi-row VALUES form took 8 parameters a row, and the driver parsing that statement's text
# (tens of thousands of placeholders) was two thirds of the planner's time.
_PLAN_PG = text(
    f"INSERT INTO {Delivery.__tablename__} "
    "(subscriber_id, digest_date, message_id, state, attempts, created_at, updated_at) "
    "SELECT s, d, m, :state, 0, :now, :now "
    "FROM unnest(CAST(:subscribers AS INTEGER[]), CAST(:days AS DATE[]), "
    "CAST(:message_ids AS VARCHAR[])) AS t(s, d, m) "
    "ON CONFLICT (subscriber_id, digest_date) DO NOTHING RETURNING id"
).bindparams(bindparam("now", type_=UTCDateTime()))


class PostgresDeliveryStore(DeliveryStore):
    def insert_planned(
        self, session: Session, rows: list[PlannedRow], now: dt.datetime
    ) -> list[int]:
        if not rows:
            return []
        subscribers, days, message_ids = (list(column) for column in zip(*rows, strict=True))
        result = session.execute(
            _PLAN_PG,
            {
                "subscribers": subscribers,
                "days": days,
                "message_ids": message_ids,
                "state": DeliveryState.PLANNED.value,
                "now": now,
            },
        )
        return [row[0] for row in result]

    def insert_items(self, session: Session, rows: list[dict[str, Any]]) -> None:
        """COPY: a batch of digests has thousands of items."""
        if not rows:
            return
        connection = session.connection()
        columns = list(rows[0])
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        table = DeliveryItem.__tablename__
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])

    def refresh_statistics(self, session: Session) -> None:
        session.execute(text(f"ANALYZE {Delivery.__tablename__}"))
        session.commit()

    def writer(
        self,
        engine: Engine,
        claim: Claim,
        *,
        retry_seconds: float = 120.0,
        durable: bool = True,
    ) -> OutcomeWriter:
        from digest.delivery.pg_writer import PostgresOutcomeWriter

        return PostgresOutcomeWriter(engine, claim, retry_seconds=retry_seconds, durable=durable)


def delivery_store(bind: Session | Engine | DBConnection) -> DeliveryStore:
    """The store for the database behind `bind`: the one place that asks which it is."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresDeliveryStore()
    if name == "sqlite":
        return SQLiteDeliveryStore()
    raise RuntimeError(f"unsupported database {name}")  # pragma: no cover
