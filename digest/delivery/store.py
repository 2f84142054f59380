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
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import is_transient, one_of
from digest.delivery import state
from digest.models import Delivery, DeliveryItem, DeliveryState, UTCDateTime

log = logging.getLogger(__name__)
T = TypeVar("T")

# A planned delivery as the planner hands it over: subscriber, digest date, Message-ID.
PlannedRow = tuple[int, dt.date, str]


@dataclass(frozen=True)
class Claim:
    """The deliveries one sender took, until when they are its own, and the fencing token its
    outcomes and lease renewals name (digest.delivery.state), so that a sender whose lease ran
    out cannot mark, or keep, the rows another sender took over since."""

    ids: list[int]
    lease_until: dt.datetime
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    def __len__(self) -> int:
        return len(self.ids)


def holder_name() -> str:
    """Who holds a claim, for `digest why`: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


class OutcomeWriter:
    """Writes the outcome of each message of a claim, one autocommitted statement each, right
    after the server answered: no ORM bookkeeping on the hot path.

    A database that goes away meanwhile (a restart, a network blip) costs seconds: each write is
    tried again on a new connection, with backoff, for up to `db_retry_seconds`, and the message
    it records is never sent again meanwhile. Each method returns False when the row is no
    longer this claim's (taken over after its lease ran out)."""

    def __init__(
        self,
        engine: Engine,
        claim: Claim,
        *,
        retry_seconds: float = 120.0,
        durable: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.claim = claim
        self.retry_seconds = retry_seconds
        self.durable = durable
        self.sleep = sleep
        self._db: DBConnection | None = None

    @property
    def db(self) -> DBConnection:
        if self._db is None:
            db = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                self.prepare(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def prepare(self, db: DBConnection) -> None:
        """Per-connection setup (a new one after each reconnect)."""

    def flush(self) -> None:
        """Wait for outcomes sent ahead (a writer that pipelines them); nothing here."""

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            try:
                self.cleanup(self._db)
            finally:
                self._db.close()
                self._db = None

    def cleanup(self, db: DBConnection) -> None:
        """Undo `prepare` before the connection goes back to the pool."""

    def _lost(self) -> None:
        if self._db is not None:
            try:
                self._db.invalidate()
                self._db.close()
            except Exception:  # noqa: BLE001 - the connection is broken already
                pass
            self._db = None

    def retrying(self, write: Callable[[DBConnection], T], what: str) -> T:
        """Run `write` on this writer's connection; a transient database error is tried again
        on a new connection, with backoff, up to `retry_seconds`."""
        waited, attempt = 0.0, 0
        while True:
            try:
                self.flush()  # an outcome sent ahead is answered before the next statement
                return write(self.db)
            except Exception as exc:
                if not is_transient(exc) or waited >= self.retry_seconds:
                    raise
                attempt += 1
                pause = min(5.0, 0.1 * 2**attempt, self.retry_seconds - waited)
                log.warning(
                    "outcome_write_retry what=%s attempt=%d wait=%.1fs error=%s",
                    what,
                    attempt,
                    pause,
                    exc.__class__.__name__,
                )
                self._lost()
                self.sleep(pause)
                waited += pause

    def _outcome(
        self, delivery_id: int, new_state: DeliveryState, write: Callable[[DBConnection], bool]
    ) -> bool:
        """Write one outcome; after a lost connection, an earlier attempt may have committed:
        the row then carries this claim's token in the new state."""
        tries = 0

        def attempt(db: DBConnection) -> bool:
            nonlocal tries
            tries += 1
            if write(db):
                return True
            return tries > 1 and state.written_by(db, delivery_id, new_state, self.claim.token)

        return self.retrying(attempt, f"{new_state.value} delivery={delivery_id}")

    def mark_sent(self, delivery_id: int, now: dt.datetime) -> bool:
        return self._outcome(
            delivery_id, DeliveryState.SENT, lambda db: self._mark_sent(db, delivery_id, now)
        )

    def _mark_sent(self, db: DBConnection, delivery_id: int, now: dt.datetime) -> bool:
        result = db.execute(
            state.MARK_SENT, {"delivery_id": delivery_id, "now": now, "token": self.claim.token}
        )
        return bool(result.rowcount)

    def set_state(
        self,
        delivery_id: int,
        new_state: DeliveryState,
        now: dt.datetime,
        *,
        reason: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> bool:
        return self._outcome(
            delivery_id,
            new_state,
            lambda db: state.set_state(
                db,
                delivery_id,
                new_state,
                now,
                token=self.claim.token,
                reason=reason,
                retry_at=retry_at,
            ),
        )

    def execute(self, statement: Any) -> Any:
        """Any other statement of the outcome path (bounce counts), with the same retries."""
        return self.retrying(lambda db: db.execute(statement), "bounce count")


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
