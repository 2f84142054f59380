"""Pure schedule logic: is a subscriber's digest due at `now`, and for which local date."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class SendWindow:
    frequency: str  # "daily" or "weekly"
    weekly_day: int  # Monday is 0
    send_hour: int
    timezone: str
    paused_until: dt.date | None = None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def local_date(timezone: str, now: dt.datetime) -> dt.date:
    return now.astimezone(zone(timezone)).date()


def not_due_reason(window: SendWindow, digest_date: dt.date) -> str | None:
    """Why nothing is due on `digest_date` (paused, not the weekly day), or None if it is due."""
    if window.paused_until is not None and digest_date <= window.paused_until:
        return f"paused until {window.paused_until.isoformat()}"
    if window.frequency == "weekly" and digest_date.weekday() != window.weekly_day:
        day = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
        return f"weekly digest, sent on {day[window.weekly_day]}s"
    return None


def due_date(window: SendWindow, now: dt.datetime) -> tuple[dt.date | None, str | None]:
    """(the local digest date that is due at `now`, None) or (None, why nothing is due)."""
    local = now.astimezone(zone(window.timezone))
    reason = not_due_reason(window, local.date())
    if reason:
        return None, reason
    if local.hour < window.send_hour:
        return None, f"send hour {window.send_hour:02d}:00 {window.timezone} not reached"
    return local.date(), None
