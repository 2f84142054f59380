"""Unsubscribe requests that arrive by email (the mailto: of List-Unsubscribe), read from an
mbox file or a maildir and honoured only when they carry a valid signed unsubscribe token.

Anyone can send mail to that address, so every message is hostile until read: each is handled
on its own (a malformed one is reported with the reason and skipped, never stops the run), only
bounded parts of it are scanned, and each one acted on is remembered so that reading the same
mailbox again changes nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from digest.links import SubscriptionGone, read_link
from digest.logs import event
from digest.models import InboundMessage, SubscriberStatus
from digest.subscribers import unsubscribe
from digest.tokens import InvalidToken, Purpose

# An itsdangerous URL-safe timed token: payload.timestamp.signature, base64url parts. A match
# starts only where a run of token characters starts, and its runs are possessive, so a scan
# is linear in the text (a plain findall is quadratic on a long run without dots).
_TOKEN_CHAR = r"[A-Za-z0-9_\-]"
TOKEN_PATTERN = re.compile(
    rf"(?<!{_TOKEN_CHAR}){_TOKEN_CHAR}{{8,}}+\.{_TOKEN_CHAR}{{4,}}+\.{_TOKEN_CHAR}{{16,}}+"
)
# An unsubscribe request is a short mail; nothing in one needs more than these.
MAX_MESSAGE_BYTES = 1_000_000
MAX_HEADER_CHARS = 8_000
MAX_BODY_CHARS = 20_000
MAX_PARTS = 50
MAX_TOKENS = 10
MAX_SENDER_CHARS = 200

UNSUBSCRIBED = "unsubscribed"
ALREADY_UNSUBSCRIBED = "already unsubscribed"
REFUSED = "refused"
SEEN_BEFORE = "seen before"
RESULTS = (UNSUBSCRIBED, ALREADY_UNSUBSCRIBED, REFUSED, SEEN_BEFORE)
log = logging.getLogger(__name__)


class MailboxError(Exception):
    """The path is neither an mbox file nor a maildir, or cannot be read."""


class MalformedMessage(Exception):
    """A message that cannot be read as an unsubscribe request; the text says why."""


@dataclass
class Outcome:
    """What became of one request: unsubscribed, already unsubscribed, refused (why), or seen
    before (read in an earlier run, nothing done again)."""

    key: str  # where the message is in the mailbox
    sender: str
    result: str
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


def sha256_hex(value: str | bytes) -> str:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


def printable(value: str, limit: int) -> str:
    """One line of at most `limit` characters: control characters (CR, LF) become spaces."""
    value = "".join(ch if ch.isprintable() else " " for ch in value[: limit * 4])
    return " ".join(value.split())[:limit]


def header_text(message: Message, name: str) -> str:
    """The decoded value of the first `name` header, from at most MAX_HEADER_CHARS of it.

    Read raw and decoded here rather than through the email package's header parser, which
    is quadratic on adjacent encoded words (80,000 characters of Subject took 14.7 s).
    """
    for key, value in message.raw_items():
        if key.lower() != name.lower():
            continue
        raw = str(value)[:MAX_HEADER_CHARS]
        try:
            return str(make_header(decode_header(raw)))
        except (LookupError, ValueError, UnicodeError):  # unknown charset, broken encoded word
            return raw
    return ""


def _plain_text(message: Message) -> str:
    """The first text/plain part, decoded as best it can be, at most MAX_BODY_CHARS of it."""
    for number, part in enumerate(message.walk()):
        if number >= MAX_PARTS:
            break
        if part.is_multipart() or part.get_content_type() != "text/plain":
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return ""
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload[: MAX_BODY_CHARS * 4].decode(charset, errors="replace")[:MAX_BODY_CHARS]
        except LookupError:  # a charset Python does not know
            return payload[:MAX_BODY_CHARS].decode("ascii", errors="replace")
    return ""


def candidate_tokens(message: Message) -> list[str]:
    """Token-shaped strings in the subject first, then in the plain-text body."""
    found = TOKEN_PATTERN.findall(header_text(message, "Subject"))
    found += TOKEN_PATTERN.findall(_plain_text(message))
    return list(dict.fromkeys(found))[:MAX_TOKENS]


def parse_message(raw: bytes) -> Message:
    """The message in `raw`, parsed without interpreting any header (that is done, bounded,
    by header_text); refused when larger than any unsubscribe request."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message is {len(raw):,} bytes, over {MAX_MESSAGE_BYTES:,}")
    return message_from_bytes(raw, policy=policy.compat32)


def read_mailbox(path: Path) -> Iterator[tuple[str, bytes | Exception]]:
    """(key, raw bytes) for every message of an mbox file or a maildir directory, or (key, the
    error) for one that cannot be read."""
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
            try:
                raw: bytes | Exception = box.get_bytes(key)
            except (OSError, KeyError, ValueError) as exc:
                raw = exc
            yield str(key), raw
    finally:
        box.close()


def count_messages(path: Path) -> int:
    return sum(1 for _ in read_mailbox(path))


@dataclass(frozen=True)
class _Request:
    sender: str
    fingerprint: str
    tokens: list[str]


def _read_request(raw: bytes | Message) -> _Request:
    """What processing needs from one message; MalformedMessage, or any error of the email
    package on a hostile message, when it cannot be read."""
    if isinstance(raw, Message):
        raw = raw.as_bytes(policy=policy.compat32)
    message = parse_message(raw)
    sender = printable(header_text(message, "From"), MAX_SENDER_CHARS)
    tokens = candidate_tokens(message)
    message_id = printable(header_text(message, "Message-ID"), 1000)
    # The same message read again has the same fingerprint. The tokens are part of it, so a
    # message that merely copies another's Message-ID cannot hide the real one.
    identity = f"id:{message_id}" if message_id else f"raw:{sha256_hex(raw)}"
    return _Request(sender, sha256_hex("\0".join([identity, *tokens])), tokens)


def process_unsubscribe_requests(
    *,
    session: Session,
    secret_key: str,
    messages: Iterator[tuple[str, bytes | Message | Exception]],
    now: dt.datetime,
    progress: Callable[[int], None] | None = None,
) -> InboundReport:
    """Unsubscribe the subscriber named by each message's signed token; refuse the others.

    The token, not the From address, is the authority: it was mailed only to the subscriber,
    and a forged or altered one fails its signature and changes nothing. Each message is
    remembered once handled, so a mailbox read again changes nothing, and a token acts once:
    unsubscribing ends the subscription it was made for (links.made_for), so a request read
    after its subscriber subscribed again does not unsubscribe them.
    """
    report = InboundReport()
    for key, raw in messages:
        outcome = _process_one(session, secret_key, key, raw, now)
        report.outcomes.append(outcome)
        level = logging.WARNING if outcome.result == REFUSED else logging.INFO
        event(
            log,
            "unsubscribe_mail.read",
            level=level,
            key=key,
            result=outcome.result,
            reason=outcome.reason or None,
        )
        if progress:
            progress(1)
    counts: dict[str, Any] = {r.replace(" ", "_"): report.count(r) for r in RESULTS}
    event(log, "unsubscribe_mail.finished", processed=report.processed, **counts)
    return report


def _process_one(
    session: Session, secret_key: str, key: str, raw: bytes | Message | Exception, now: dt.datetime
) -> Outcome:
    if isinstance(raw, Exception):
        return Outcome(key, "", REFUSED, f"message could not be read: {error_text(raw)}")
    try:
        request = _read_request(raw)
    except Exception as exc:  # any hostile message is reported and skipped, never fatal
        return Outcome(key, "", REFUSED, f"malformed message: {error_text(exc)}")
    seen = session.exec(
        select(InboundMessage).where(col(InboundMessage.fingerprint) == request.fingerprint)
    ).first()
    if seen is not None:
        return Outcome(key, request.sender, SEEN_BEFORE, f"{seen.result} when first read")
    outcome, token = _act(session, secret_key, key, request, now)
    session.add(
        InboundMessage(
            fingerprint=request.fingerprint,
            token_hash=sha256_hex(token) if token else None,
            result=outcome.result,
            processed_at=now,
        )
    )
    session.commit()
    return outcome


def _act(
    session: Session, secret_key: str, key: str, request: _Request, now: dt.datetime
) -> tuple[Outcome, str | None]:
    """The outcome of one new request, and the token it used (None when it used none)."""
    sender = request.sender
    if not request.tokens:
        return Outcome(key, sender, REFUSED, "no unsubscribe token in the subject or body"), None
    reason = ""
    for token in request.tokens:
        try:
            target = read_link(
                session=session, secret_key=secret_key, purpose=Purpose.UNSUBSCRIBE, token=token
            )
        except SubscriptionGone:
            reason = "token names no known subscriber (removed?)"
            continue
        except InvalidToken as exc:
            reason = "token not valid: forged, altered or made for another purpose"
            if exc.expired:
                reason = "token expired"
            continue
        subscriber = target.subscriber
        if target.current and subscriber.status != SubscriberStatus.UNSUBSCRIBED:
            unsubscribe(session=session, subscriber_id=target.sid, now=now, via="mail")
            return Outcome(key, sender, UNSUBSCRIBED, email=subscriber.email), token
        if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return Outcome(key, sender, ALREADY_UNSUBSCRIBED, email=subscriber.email), token
        reason = "token of an earlier subscription: unsubscribed and subscribed again since"
        return Outcome(key, sender, REFUSED, reason, email=subscriber.email), token
    return Outcome(key, sender, REFUSED, reason), None


def error_text(exc: BaseException) -> str:
    return printable(f"{type(exc).__name__}: {exc}", 200)
