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
    """The zone `name`, or a ValueError for anything that is not one: ZoneInfo opens `name` as a
    file of the zone database, so a folder (`America`) or an over-long name fails with an
    OSError, which would otherwise surface as a 500."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
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


def send_moment(day: dt.date, hour: int, timezone: str) -> dt.datetime:
    """The UTC moment of `hour` o'clock local time on `day`.

    On a spring-forward day a missing local hour maps to the moment just after the jump; on a
    fall-back day an hour that happens twice means its first occurrence (fold=0). Either way each
    local date has exactly one send moment, so no day is skipped or doubled.
    """
    local = dt.datetime.combine(day, dt.time(hour), tzinfo=zone(timezone))
    return local.astimezone(dt.UTC)


def latest_due(
    window: SendWindow, now: dt.datetime, catchup: dt.timedelta
) -> tuple[dt.date | None, str | None]:
    """The newest local digest date whose send moment has passed, if within the catch-up window.

    A planner that runs late (or was down) still finds the day it missed, as long as it is at
    most `catchup` late; a subscriber who joins in the evening starts the next morning.
    """
    today = now.astimezone(zone(window.timezone)).date()
    day = today
    moment = send_moment(day, window.send_hour, window.timezone)
    if moment > now:
        day = today - dt.timedelta(days=1)
        moment = send_moment(day, window.send_hour, window.timezone)
    reason = not_due_reason(window, day)
    if reason:
        return None, reason
    if now - moment > catchup:
        return None, f"send hour {window.send_hour:02d}:00 {window.timezone} not reached"
    return day, None
