"""Unsubscribe requests that arrive by email (the mailto: of List-Unsubscribe), read from an
mbox file or a maildir and honoured only when they carry a valid signed unsubscribe token."""

from __future__ import annotations

import datetime as dt
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from sqlmodel import Session

from digest.models import Subscriber, SubscriberStatus
from digest.subscribers import unsubscribe
from digest.tokens import InvalidToken, Purpose, read_token

# An itsdangerous URL-safe timed token: payload.timestamp.signature, base64url parts.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{16,}")
MAX_BODY_CHARS = 20_000


class MailboxError(Exception):
    """The path is neither an mbox file nor a maildir, or cannot be read."""


@dataclass
class Outcome:
    """What became of one request: unsubscribed, already unsubscribed, or refused (why)."""

    key: str  # where the message is in the mailbox
    sender: str
    result: str  # "unsubscribed", "already unsubscribed" or "refused"
    reason: str = ""
    email: str | None = None


@dataclass
class InboundReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return len(self.outcomes)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)


def candidate_tokens(message: EmailMessage) -> list[str]:
    """Token-shaped strings in the subject first, then in the plain-text body."""
    found = TOKEN_PATTERN.findall(str(message.get("Subject", "")))
    body_part = message.get_body(("plain",)) if message.is_multipart() else message
    if body_part is not None and body_part.get_content_type() == "text/plain":
        try:
            body = str(body_part.get_content())[:MAX_BODY_CHARS]
        except (LookupError, ValueError):  # unknown charset or broken encoding
            body = ""
        found += TOKEN_PATTERN.findall(body)
    return list(dict.fromkeys(found))


def read_mailbox(path: Path) -> Iterator[tuple[str, EmailMessage]]:
    """(key, message) for every message of an mbox file or a maildir directory."""
    box: mailbox.Mailbox
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise MailboxError(f"{path} is a directory but not a maildir (no cur/ or new/)")
        box = mailbox.Maildir(path, factory=None, create=False)
    elif path.is_file():
        box = mailbox.mbox(path, factory=None, create=False)
    else:
        raise MailboxError(f"{path} does not exist")
    try:
        for key in sorted(box.keys(), key=str):
            raw = box.get_bytes(key)
            yield str(key), message_from_bytes(raw, policy=policy.default)  # type: ignore[misc]
    finally:
        box.close()


def count_messages(path: Path) -> int:
    return sum(1 for _ in read_mailbox(path))


def process_unsubscribe_requests(
    *,
    session: Session,
    secret_key: str,
    messages: Iterator[tuple[str, EmailMessage]],
    now: dt.datetime,
    progress: Callable[[int], None] | None = None,
) -> InboundReport:
    """Unsubscribe the subscriber named by each message's signed token; refuse the others.

    The token, not the From address, is the authority: it was mailed only to the subscriber,
    and a forged or altered one fails its signature and changes nothing.
    """
    report = InboundReport()
    for key, message in messages:
        sender = " ".join(str(message.get("From", "")).split())[:200]
        report.outcomes.append(_process_one(session, secret_key, key, sender, message, now))
        if progress:
            progress(1)
    return report


def _process_one(
    session: Session,
    secret_key: str,
    key: str,
    sender: str,
    message: EmailMessage,
    now: dt.datetime,
) -> Outcome:
    tokens = candidate_tokens(message)
    if not tokens:
        return Outcome(key, sender, "refused", "no unsubscribe token in the subject or body")
    reason = ""
    for token in tokens:
        try:
            payload = read_token(secret_key, Purpose.UNSUBSCRIBE, token)
        except InvalidToken as exc:
            reason = "token not valid: forged, altered or made for another purpose"
            if exc.expired:
                reason = "token expired"
            continue
        sid = payload.get("s")
        subscriber = session.get(Subscriber, sid) if isinstance(sid, int) else None
        if subscriber is None or subscriber.id is None:
            reason = "token names no known subscriber (removed?)"
            continue
        if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return Outcome(key, sender, "already unsubscribed", email=subscriber.email)
        unsubscribe(session=session, subscriber_id=subscriber.id, now=now)
        return Outcome(key, sender, "unsubscribed", email=subscriber.email)
    return Outcome(key, sender, "refused", reason)
