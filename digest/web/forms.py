"""The web forms: what the subscribe and preferences forms send, parsed one way into the
arguments of digest.subscribers; the subscriber functions do the validating."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from werkzeug.datastructures import MultiDict

from digest.config import Settings
from digest.errors import UserError

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FORM_INT = re.compile(r"-?[0-9]{1,3}")

Form = MultiDict[str, str]


@lru_cache(maxsize=1)
def timezone_names() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


def split_terms(text: str) -> list[str]:
    """Topics typed as one string: separated by commas, semicolons or new lines."""
    for sep in (";", "\n", "\r"):
        text = text.replace(sep, ",")
    return text.split(",")


def form_int(value: str | None, default: int, what: str) -> int:
    """A small whole number chosen from a list, `default` when the field is empty or absent."""
    if not value:
        return default
    # Digits only: no spaces, signs other than '-', or line breaks sneak through int().
    if not _FORM_INT.fullmatch(value):
        raise UserError(f"The {what} must be chosen from the list.")
    return int(value)


def subscription_fields(form: Form, settings: Settings) -> dict[str, Any]:
    """The subscribe form as keyword arguments of subscribers.request_subscription."""
    return {
        "email": form.get("email", ""),
        "topics": split_terms(form.get("topics", "")),
        "exclude": split_terms(form.get("exclude", "")),
        "frequency": form.get("frequency") or None,
        "weekly_day": form_int(form.get("weekly_day"), 0, "day of the week"),
        "send_hour": form_int(form.get("send_hour"), settings.default_send_hour, "send hour"),
        "timezone": form.get("timezone") or None,
    }


def preference_fields(form: Form, *, today: dt.date) -> dict[str, Any]:
    """The preferences form as keyword arguments of subscribers.update_preferences."""
    return {
        "topics": split_terms(form.get("topics", "")),
        "exclude": split_terms(form.get("exclude", "")),
        "frequency": form.get("frequency", "daily"),
        "weekly_day": form_int(form.get("weekly_day"), 0, "day of the week"),
        "send_hour": form_int(form.get("send_hour"), 7, "send hour"),
        "timezone": form.get("timezone", "UTC"),
        "pause_days": form_int(form.get("pause_days"), 0, "pause"),
        "today": today,
    }
