"""A claim's lease, kept alive while its sender works: renewed from a thread every third of
the lease (so a long batch, a rate-limited relay or a stalled server keep their rows), and
asked before each message whether that row is still this sender's and the lease covers the
longest one message can take. A sender whose rows were taken over stops sending them.

Without a moving clock (a test's fixed `now`) nothing is renewed: only ownership is checked.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.engine import Engine

from digest.config import Settings
from digest.db import is_transient
from digest.delivery import state
from digest.delivery.outcomes import Claim

log = logging.getLogger(__name__)


def message_budget(settings: Settings) -> float:
    """The longest one message may take to hand over, in seconds: what a lease must still
    cover when a sender starts a message."""
    if settings.mailer != "smtp":
        return 5.0
    wait = 1.0 / settings.smtp_rate_per_second if settings.smtp_rate_per_second else 0.0
    return settings.smtp_timeout + wait


class LeaseKeeper:
    def __init__(
        self,
        *,
        engine: Engine,
        claim: Claim,
        settings: Settings,
        clock: Callable[[], dt.datetime] | None,
    ) -> None:
        self.engine = engine
        self.token = claim.token
        self.lease = dt.timedelta(seconds=settings.lease_seconds)
        # Renew before starting a message when less than this is left.
        self.margin = dt.timedelta(
            seconds=min(message_budget(settings), settings.lease_seconds * 2 / 3)
        )
        self.clock = clock
        self.until = claim.lease_until
        self.owned = set(claim.ids)
        self.lost: set[int] = set()
        self.renewals = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if self.clock is not None and self.owned:
            interval = self.lease.total_seconds() / 3
            self._thread = threading.Thread(
                target=self._beat, args=(interval,), name="lease-keeper", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - logged; the sender checks the lease
                log.warning(
                    "lease_renew_failed claim=%s error=%s: %s",
                    self.token[:8],
                    exc.__class__.__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )

    def renew(self) -> None:
        """Extend the lease of the rows still this claim's; forget those taken over."""
        if self.clock is None:
            return
        now = self.clock()
        until = now + self.lease
        with self.engine.connect() as db:
            result = db.execute(state.RENEW, {"token": self.token, "until": until})
            ids: set[int] = {row[0] for row in result if row[0] is not None}
            db.commit()
        with self._lock:
            gone = self.owned - ids
            if gone:
                log.warning(
                    "lease_lost claim=%s rows=%d (taken over after the lease ran out)",
                    self.token[:8],
                    len(gone),
                )
                self.lost |= gone
            self.owned = ids & self.owned
            self.until = until
            self.renewals += 1

    def done(self, delivery_id: int) -> None:
        """This row has its outcome: nothing more to renew or check for it."""
        with self._lock:
            self.owned.discard(delivery_id)

    def may_send(self, delivery_id: int) -> bool:
        """Whether this sender may start the message of `delivery_id` now: the row is still
        its own and the lease covers the longest a message can take (renewed now if not)."""
        with self._lock:
            if delivery_id not in self.owned:
                return False
        if self.clock is None or self.until - self.clock() >= self.margin:
            return True
        # The database may be away for a moment (a restart): wait for it while the lease
        # still runs (nobody else can take the rows meanwhile), rather than give the batch up.
        pause = 0.2
        while True:
            try:
                self.renew()
                break
            except Exception as exc:
                if not is_transient(exc) or self.until - self.clock() < dt.timedelta(seconds=1):
                    log.warning(
                        "lease_not_renewable claim=%s error=%s",
                        self.token[:8],
                        exc.__class__.__name__,
                    )
                    return False
                time.sleep(pause)
                pause = min(2.0, pause * 2)
        with self._lock:
            return delivery_id in self.owned and self.until - self.clock() >= self.margin
