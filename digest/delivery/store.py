"""Where deliveries are written: one interface (listmonk's store idea), one implementation per
database, so the delivery code never asks which database it runs on.

The statements themselves are defined once, in digest.delivery.state; a store decides how to
run them fast on its database: PostgreSQL takes a page of planned rows as three arrays, a
digest's items through COPY, and "sent" marks as a server-side prepared statement run through
libpq; SQLite takes the portable SQLAlchemy forms.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import one_of
from digest.delivery import state
from digest.models import Delivery, DeliveryItem, DeliveryState, UTCDateTime

# A planned delivery as the planner hands it over: subscriber, digest date, Message-ID.
PlannedRow = tuple[int, dt.date, str]


@dataclass(frozen=True)
class Claim:
    """The deliveries one sender took, and until when they are its own.

    Outcomes are written for a claim (`DeliveryStore.outcomes`): this is where a fencing token
    goes, so that a sender whose lease ran out cannot mark another sender's rows.
    """

    ids: list[int]
    lease_until: dt.datetime

    def __len__(self) -> int:
        return len(self.ids)


class OutcomeWriter:
    """Writes the outcome of each message of a claim, one autocommitted statement each, right
    after the server answered: no ORM bookkeeping on the hot path."""

    def __init__(self, db: DBConnection, claim: Claim | None = None) -> None:
        self.db = db
        self.claim = claim

    def mark_sent(self, delivery_id: int, now: dt.datetime) -> None:
        self.db.execute(state.MARK_SENT, {"delivery_id": delivery_id, "now": now})

    def set_state(
        self,
        delivery_id: int,
        new_state: DeliveryState,
        now: dt.datetime,
        *,
        reason: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> None:
        state.set_state(self.db, delivery_id, new_state, now, reason=reason, retry_at=retry_at)


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
        if not delivery_ids:
            return Claim([], lease_until)
        statement = state.claim_statement(
            one_of(session, col(Delivery.id), delivery_ids),
            now=now,
            settings=settings,
            retry_now=retry_now,
        )
        claimed = [row[0] for row in session.execute(statement)]
        session.commit()
        return Claim(claimed, lease_until)

    @contextmanager
    def outcomes(self, session: Session, claim: Claim) -> Iterator[OutcomeWriter]:
        """A writer for the outcomes of `claim`, on its own autocommit connection."""
        engine = session.get_bind()
        if not isinstance(engine, Engine):
            raise TypeError("outcomes are written through an engine's connection")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
            yield self.writer(db, claim)

    def writer(self, db: DBConnection, claim: Claim | None = None) -> OutcomeWriter:
        return OutcomeWriter(db, claim)


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

    @contextmanager
    def outcomes(self, session: Session, claim: Claim) -> Iterator[OutcomeWriter]:
        with super().outcomes(session, claim) as writer:
            # Each outcome is its own commit; not waiting for the WAL flush makes that cheap.
            # A worker that dies loses nothing (the commit is in the server); only a crash of
            # PostgreSQL itself could lose the last fraction of a second of "sent" marks, and
            # those digests would then go out again: at-least-once in that one case.
            writer.db.exec_driver_sql("SET synchronous_commit TO OFF")
            writer.db.commit()
            yield writer
            writer.db.exec_driver_sql("RESET synchronous_commit")  # the pooled connection is shared
            writer.db.commit()

    def writer(self, db: DBConnection, claim: Claim | None = None) -> OutcomeWriter:
        return PostgresOutcomeWriter(db, claim)


def _mark_sent_for_libpq() -> tuple[bytes, bytes, list[bytes | None], int, int]:
    """`state.MARK_SENT` as PostgreSQL text with $n placeholders, its statement name (from
    its text, so a pooled connection never runs an older version under the same name), its
    constant parameters, and the positions of `now` and `delivery_id` among them."""
    compiled = state.MARK_SENT.compile(
        dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
    )
    names = list(compiled.positiontup or [])
    values = [
        None if compiled.params[name] is None else str(compiled.params[name]).encode()
        for name in names
    ]
    sql = compiled.string.encode()
    name = b"digest_mark_sent_" + hashlib.sha256(sql).hexdigest()[:12].encode()
    return sql, name, values, names.index("now"), names.index("delivery_id")


class PostgresOutcomeWriter(OutcomeWriter):
    """ "Sent" marks as a server-side prepared statement run through libpq itself (psycopg's
    `pgconn`): no query text to convert per call, half the client CPU of a prepared cursor
    execute and a twentieth of an SQLAlchemy one."""

    _SQL, _NAME, _PARAMS, _NOW, _ID = _mark_sent_for_libpq()

    def __init__(self, db: DBConnection, claim: Claim | None = None) -> None:
        from psycopg import pq

        super().__init__(db, claim)
        self.pgconn: Any = db.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
        result = self.pgconn.prepare(self._NAME, self._SQL)
        # A pooled connection keeps what it prepared for an earlier batch (42P05).
        if result.status != pq.ExecStatus.COMMAND_OK and (
            result.error_field(pq.DiagnosticField.SQLSTATE) != b"42P05"
        ):
            _raise(result)

    def mark_sent(self, delivery_id: int, now: dt.datetime) -> None:
        params = list(self._PARAMS)
        params[self._NOW] = now.isoformat().encode()
        params[self._ID] = str(delivery_id).encode()
        result = self.pgconn.exec_prepared(self._NAME, params)
        if result.status != 1:  # pq.ExecStatus.COMMAND_OK
            _raise(result)


def _raise(result: Any) -> None:
    import psycopg.errors

    raise psycopg.errors.error_from_result(result, encoding="utf-8")


def delivery_store(bind: Session | Engine | DBConnection) -> DeliveryStore:
    """The store for the database behind `bind`: the one place that asks which it is."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresDeliveryStore()
    if name == "sqlite":
        return SQLiteDeliveryStore()
    raise RuntimeError(f"unsupported database {name}")  # pragma: no cover
