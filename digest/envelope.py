"""Message-IDs, bounce addresses and the envelope (sender, recipient, date, Message-ID,
envelope sender) of every mail we send.

A leaf: digests (digest.delivery) and confirmations (subscribers) both take their envelope
from here, so neither has to import the other.
"""

from __future__ import annotations

import datetime as dt
import os

from digest.config import Settings
from digest.render import Envelope
from digest.tokens import make_bounce_token


def new_message_ids(domain: str, count: int) -> list[str]:
    """`count` unique Message-IDs: 128 random bits each, drawn in one call (the planner makes
    a page of thousands at once)."""
    random_hex = os.urandom(16 * count).hex()
    return [f"<{random_hex[32 * n : 32 * n + 32]}.digest@{domain}>" for n in range(count)]


def new_message_id(domain: str) -> str:
    return new_message_ids(domain, 1)[0]


def message_id_domain(settings: Settings) -> str:
    """Message-IDs are made at the sender's domain."""
    return settings.from_address.rsplit("@", 1)[-1]


def bounce_address(settings: Settings, delivery_id: int) -> str | None:
    """The envelope sender of one delivery's digest, bounce_local_part+TOKEN@bounce_domain
    (VERP: a bounce names the delivery it is about, whatever address it reports), or None
    when no bounce domain is set (bounces then go to from_address)."""
    if settings.bounce_domain is None:
        return None
    token = make_bounce_token(settings.secret_key, delivery_id)
    return f"{settings.bounce_local_part}+{token}@{settings.bounce_domain}"


def envelope(
    settings: Settings,
    recipient: str,
    now: dt.datetime,
    message_id: str | None = None,
    *,
    return_path: str | None = None,
) -> Envelope:
    """From our sender to `recipient`, dated `now`, with `message_id` or a new one; bounces
    go to `return_path` (None: our sender)."""
    return Envelope(
        sender_name=settings.from_name,
        sender_address=settings.from_address,
        recipient=recipient,
        now=now,
        message_id=message_id or new_message_id(message_id_domain(settings)),
        return_path=return_path,
    )
