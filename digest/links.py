"""Signed links in emails and pages: a purpose and a payload → a URL, and a link read back to the
subscriber it names and whether it was made for their subscription as it is now.

A subscriber's links carry the subscription's `link_key` (digest/models.py). It changes when
the subscription ends and when it starts again, so a link of an earlier subscription, or of a
removed subscriber whose id a database once gave again, never acts on the present one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from digest.config import Settings
from digest.models import Subscriber
from digest.tokens import InvalidToken, Purpose, make_token, read_token_issued

# The key of rows from before link keys, and the one a link mailed then (it has none) reads as.
LEGACY_KEY = ""


def signed_link(settings: Settings, path: str, purpose: Purpose, payload: dict[str, object]) -> str:
    """`{base_url}/{path}/{token}`: a link that only does `purpose` for `payload`."""
    return f"{settings.base_url}/{path}/{make_token(settings.secret_key, purpose, payload)}"


def link_payload(subscriber: Subscriber, **extra: object) -> dict[str, object]:
    """Who a link is for: the subscriber's id and their subscription's key."""
    return {"s": subscriber.id, "k": subscriber.link_key, **extra}


def subscriber_link(
    settings: Settings, path: str, purpose: Purpose, subscriber: Subscriber, **extra: object
) -> str:
    return signed_link(settings, path, purpose, link_payload(subscriber, **extra))


class SubscriptionGone(InvalidToken):
    """The link is genuine but names a subscriber who no longer exists."""


@dataclass(frozen=True)
class LinkTarget:
    """A genuine link read back: its subscriber, their id, its payload, and whether it was made
    for the subscription the subscriber has now (False: an earlier one, which has ended)."""

    subscriber: Subscriber
    sid: int
    payload: dict[str, Any]
    current: bool


def made_for(subscriber: Subscriber, payload: dict[str, Any], issued: dt.datetime) -> bool:
    """Whether a link was made for the subscriber's present subscription."""
    key = payload.get("k", LEGACY_KEY)
    if key != subscriber.link_key:
        return False
    if key == LEGACY_KEY:
        # A link from before link keys names a row that has not changed subscription since.
        # Made before that row existed, it was a removed subscriber's, whose id SQLite gave
        # again then: never this one's.
        return issued >= subscriber.created_at.replace(microsecond=0)
    return True


def read_link(
    *,
    session: Session,
    secret_key: str,
    purpose: Purpose,
    token: str,
    max_age: int | None = None,
) -> LinkTarget:
    """The subscriber a signed link names; InvalidToken when it is forged, altered, expired or
    made for another purpose, SubscriptionGone when that subscriber no longer exists."""
    payload, issued = read_token_issued(secret_key, purpose, token, max_age=max_age)
    sid = payload.get("s")
    subscriber = session.get(Subscriber, sid) if type(sid) is int else None
    if subscriber is None or subscriber.id is None:
        raise SubscriptionGone("This subscription no longer exists.")
    return LinkTarget(subscriber, subscriber.id, payload, made_for(subscriber, payload, issued))
