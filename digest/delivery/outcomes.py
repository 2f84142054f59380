"""What one sender's claim writes back: the outcome of each delivery (sent, failed, retry,
unconfirmed), through a connection of its own, retried while the database is away, and fenced
by the claim's token (digest.delivery.state). The PostgreSQL store's faster writer
(digest.delivery.pg_writer) is a subclass; the stores (digest.delivery.store) hand them out.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine

from digest.db import is_transient
from digest.delivery import state
from digest.models import DeliveryState

log = logging.getLogger(__name__)
T = TypeVar("T")


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
