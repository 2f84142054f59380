"""One sender interface with SMTP, file (outbox) and console backends, chosen by a setting.

    with mailer.connect() as connection:   # one connection for a batch
        connection.send(message)           # DeliveryError says what happened

A DeliveryError is permanent (a 5xx: never retried), temporary (tried again later),
`unreachable` (the mailer cannot take any message now: the rest of the batch waits too) or
`unconfirmed` (the connection dropped after the whole message was handed over, before the
server answered: it may have been delivered, so it is not sent again blindly).
"""

from __future__ import annotations

from pathlib import Path

from digest.config import Settings
from digest.mailer.base import Connection, DeliveryError, Mailer
from digest.mailer.outbox import (
    ConsoleConnection,
    ConsoleMailer,
    FileConnection,
    FileMailer,
    outbox_filename,
)
from digest.mailer.smtp import (
    RateLimiter,
    SMTPConfig,
    SMTPConnection,
    SMTPMailer,
)

__all__ = [
    "Connection",
    "ConsoleConnection",
    "ConsoleMailer",
    "DeliveryError",
    "FileConnection",
    "FileMailer",
    "Mailer",
    "RateLimiter",
    "SMTPConfig",
    "SMTPConnection",
    "SMTPMailer",
    "mailer_for",
    "make_mailer",
    "outbox_filename",
]


def make_mailer(
    kind: str,
    *,
    outbox_dir: Path,
    smtp_url: str,
    smtp_timeout: float,
    rate_per_second: float = 0.0,
    rate_burst: int = 50,
    pooled: bool = False,
) -> Mailer:
    if kind == "smtp":
        limiter = RateLimiter(rate_per_second, rate_burst) if rate_per_second > 0 else None
        config = SMTPConfig.from_url(smtp_url, timeout=smtp_timeout)
        return SMTPMailer(config, limiter, pooled=pooled)
    if kind == "file":
        return FileMailer(outbox_dir)
    if kind == "console":
        return ConsoleMailer()
    raise ValueError(f"unknown mailer {kind!r}: use smtp, file or console")


def mailer_for(settings: Settings, *, pooled: bool = False) -> Mailer:
    """The mailer the settings choose; `pooled` keeps an SMTP connection open between uses."""
    return make_mailer(
        settings.mailer,
        outbox_dir=settings.outbox_dir,
        smtp_url=settings.smtp_url,
        smtp_timeout=settings.smtp_timeout,
        rate_per_second=settings.smtp_rate_per_second,
        rate_burst=settings.smtp_rate_burst,
        pooled=pooled,
    )
