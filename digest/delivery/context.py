"""What the steps of one send share, handed down as one object: settings, mailer, the moment
of the send, the summary being filled in, and the progress, sleep and clock hooks."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from digest.config import Settings
from digest.delivery.report import SendSummary
from digest.mailer import Mailer

Progress = Callable[[int], None]


@dataclass
class SendContext:
    settings: Settings
    mailer: Mailer
    # The moment the send started: digests are ranked, dated and claimed as of it.
    now: dt.datetime
    summary: SendSummary = field(default_factory=SendSummary)
    progress: Progress | None = None
    sleep: Callable[[float], None] = time.sleep
    # The time outcomes are recorded at (a long batch's clock moves on); `now` without it.
    clock: Callable[[], dt.datetime] | None = None

    def moment(self) -> dt.datetime:
        return self.clock() if self.clock is not None else self.now

    def advance(self, done: int = 1) -> None:
        """`done` more deliveries are finished with, one way or another."""
        if self.progress is not None and done > 0:
            self.progress(done)
