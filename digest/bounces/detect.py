"""Reading one bounce: which recipients failed, hard or soft, why, and the bounce token of the
delivery it is about.

Pure: bytes in, `Findings` out. The failed recipients come from flufl.bounce (GNU Mailman's
detectors: RFC 3464 delivery status notifications, Exim's X-Failed-Recipients, qmail's QSBMF,
Postfix, Exchange and a dozen other servers' formats); their status and reason, the token and
the returned digest's date are read here. Anyone can mail the bounce address, so every scan
is bounded: the message's size, its parts, the characters read, the addresses taken.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

from flufl.bounce import all_failures

from digest.inbound import MAX_HEADER_CHARS, header_text, printable, sha256_hex

# flufl.bounce logs each of its detectors at INFO for every message, and a detector's error
# with its traceback before raising it again: the run reports each message in one line itself.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

# What is read of a message: a server's report and the headers it returns come first, well
# within this, before any copy of the digest (~60 KB). Some of flufl.bounce's patterns take
# time quadratic in a line's length (~0.5 s on this much of hostile lines), so lines are also
# cut at RFC 5322's limit.
MAX_READ_BYTES = 128_000
MAX_LINE_BYTES = 998
MAX_PARTS = 100
MAX_SCAN_CHARS = 400_000
MAX_REASON_CHARS = 300
MAX_FAILURES = 20
MAX_TOKENS = 5
# The lines after a failed address where a server writes its answer (Exim: address, host,
# command, answer).
REASON_WINDOW = 8

# RFC 3463 enhanced status codes (5.1.1) and SMTP reply codes (550) at the start of a line or
# after a colon ("Remote host said: 550 ..."): never the inside of an IP address or a date.
ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
SMTP_REPLY = re.compile(r"(?:^|:\s*)([45]\d\d)(?:[ -]|$)")
DIGEST_DATE = re.compile(r"(?im)^X-Digest-Date:[ \t]*(\d{4}-\d{2}-\d{2})[ \t]*$")
# Where a plain-text notice starts quoting the returned message (Exim, qmail, Sendmail...).
RETURNED_COPY = re.compile(
    r"(?i)^\s*-{2,}.*(copy of the message|below this line|original message|returned message)"
)
RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers")


class MalformedBounce(Exception):
    """A message that cannot be read as a bounce; the text says why."""


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports as failed for good."""

    address: str  # lower case, as reported
    hard: bool  # refused for good (5.x.x); False: the server gave up for now (4.x.x)
    status: str | None  # the RFC 3463 code, e.g. "5.1.1"
    reason: str  # one line: the server's answer, or what the report says


@dataclass(frozen=True)
class Findings:
    failures: list[Failure]
    delayed: list[str]  # recipients only delayed so far (warnings, not failures)
    tokens: list[str]  # bounce tokens found, the bounce's own headers first
    digest_date: dt.date | None  # X-Digest-Date of the returned digest
    fingerprint: str  # the same message read again has the same one


def bounce_token_pattern(local_part: str) -> re.Pattern[str]:
    """`local_part+TOKEN@` in any case (servers may change it), at any domain: a bounce domain
    changed since the digest went out still finds its token, which its signature checks."""
    return re.compile(
        rf"(?<![A-Za-z0-9._+-]){re.escape(local_part)}\+([0-9]{{1,18}}-[a-z2-7]{{16}})@",
        re.IGNORECASE,
    )


def read_bounce(raw: bytes, *, local_part: str) -> Findings:
    """What a bounce says; MalformedBounce, or any error of the email package or a detector
    on a hostile message, when it cannot be read."""
    message = message_from_bytes(_bounded(raw), policy=policy.compat32)
    if not message.keys():
        raise MalformedBounce("no headers: not a mail message")
    everything, notice = _texts(message)
    temporary, permanent = all_failures(message)
    statuses = _dsn_statuses(message)
    pattern = bounce_token_pattern(local_part)
    failures = [
        _failure(address, statuses, notice) for address in _addresses(permanent)[:MAX_FAILURES]
    ]
    # A server may quote our envelope sender in its answer: a token is never kept or shown.
    hidden = f"{local_part}+TOKEN@"
    failures = [
        Failure(pattern.sub(hidden, f.address), f.hard, f.status, pattern.sub(hidden, f.reason))
        for f in failures
    ]
    found = pattern.findall(everything)
    tokens = list(dict.fromkeys(t.lower() for t in found))[:MAX_TOKENS]
    message_id = printable(header_text(message, "Message-ID"), 1000)
    identity = f"id:{message_id}" if message_id else f"raw:{sha256_hex(raw)}"
    # The findings are part of the fingerprint: a message that merely copies another's
    # Message-ID cannot hide the real one.
    parts = ["bounce", identity, *tokens, *(f.address for f in failures)]
    return Findings(
        failures=failures,
        delayed=_addresses(temporary)[:MAX_FAILURES],
        tokens=tokens,
        digest_date=_digest_date(everything),
        fingerprint=sha256_hex("\0".join(parts)),
    )


def _bounded(raw: bytes) -> bytes:
    """The first MAX_READ_BYTES of the message, cut at a line end, each line at most
    MAX_LINE_BYTES long."""
    if len(raw) > MAX_READ_BYTES:
        head = raw[:MAX_READ_BYTES]
        raw = head[: head.rfind(b"\n") + 1] or head
    lines = raw.split(b"\n")
    if max(map(len, lines)) > MAX_LINE_BYTES + 1:  # + the CR of a CRLF
        raw = b"\n".join(line[: MAX_LINE_BYTES + 1] for line in lines)
    return raw


def _addresses(found: frozenset[bytes]) -> list[str]:
    addresses = (printable(a.decode("ascii", "replace"), 320).strip("<> ").lower() for a in found)
    return sorted(a for a in addresses if a)


def _parts(message: Message) -> Iterator[tuple[Message, bool]]:
    """Each part, depth first, at most MAX_PARTS, and whether it belongs to the returned message
    (a quoted digest's headers are not the server's report)."""
    stack = [(message, False)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, returned = stack.pop()
        seen += 1
        returned = returned or part.get_content_type() in RETURNED_TYPES
        yield part, returned
        payload = part.get_payload()
        if isinstance(payload, list):
            children = [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]
            stack.extend((child, returned) for child in reversed(children))


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    data = payload[: MAX_SCAN_CHARS * 4]
    try:
        return data.decode(part.get_content_charset() or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("ascii", errors="replace")


def _texts(message: Message) -> tuple[str, str]:
    """(everything, notice): every part's headers and text, for tokens and the digest date;
    and the plain text of the server's own notice, up to where it quotes the returned message.
    Each at most MAX_SCAN_CHARS."""
    everything: list[str] = []
    notice: list[str] = []
    size = 0
    for part, returned in _parts(message):
        if size >= MAX_SCAN_CHARS:
            break
        chunk = [f"{name}: {str(value)[:MAX_HEADER_CHARS]}" for name, value in part.raw_items()]
        if not part.is_multipart() and part.get_content_maintype() in ("text", "message"):
            text = _decoded(part)
            chunk.append(text)
            if not returned and part.get_content_type() == "text/plain":
                notice.append(text)
        joined = "\n".join(chunk)[: MAX_SCAN_CHARS - size]
        everything.append(joined)
        size += len(joined)
    return "\n".join(everything), _until_returned_copy("\n".join(notice)[:MAX_SCAN_CHARS])


def _until_returned_copy(text: str) -> str:
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if RETURNED_COPY.match(line):
            return "\n".join(lines[:number])
    return text


def _dsn_statuses(message: Message) -> dict[str, tuple[str, str]]:
    """Per recipient of an RFC 3464 report: (Status, Diagnostic-Code without its type)."""
    statuses: dict[str, tuple[str, str]] = {}
    for part, returned in _parts(message):
        if returned or part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks[: MAX_FAILURES * 2] if isinstance(blocks, list) else []:
            if not isinstance(block, Message):
                continue
            status = printable(header_text(block, "Status"), 40)
            diagnostic = printable(header_text(block, "Diagnostic-Code"), MAX_REASON_CHARS)
            diagnostic = diagnostic.split(";", 1)[-1].strip()  # "smtp; 550 ..."
            for name in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
                value = header_text(block, name).split(";", 1)[-1]
                address = printable(value, 320).strip("<> ").lower()
                if address:
                    statuses.setdefault(address, (status, diagnostic))
    return statuses


def _reason_in_text(notice: str, address: str) -> str:
    """The server's answer near the failed address in a plain-text notice (Exim, qmail)."""
    lines = notice.splitlines()
    for number, line in enumerate(lines):
        if address not in line.lower():
            continue
        for candidate in lines[number : number + REASON_WINDOW]:
            text = candidate.strip()
            if ENHANCED_STATUS.search(text) or SMTP_REPLY.search(text):
                return printable(text, MAX_REASON_CHARS)
    return ""


def _classify(status: str, reason: str) -> tuple[str | None, bool]:
    """The enhanced status code, and whether the failure is hard: 5.x.x (or a 5xx answer) is,
    4.x.x (a 4xx answer) is not; a report that says neither counts as hard, as flufl.bounce
    reports it permanent."""
    codes = [c for c in (ENHANCED_STATUS.search(status), ENHANCED_STATUS.search(reason)) if c]
    # A report's Status may give only the class (Exim: 5.0.0) where the answer says more.
    code = next((c for c in codes if c.group(2, 3) != ("0", "0")), codes[0] if codes else None)
    if code is not None:
        return ".".join(code.groups()), code.group(1) != "4"
    reply = SMTP_REPLY.search(reason)
    return None, reply is None or reply.group(1)[0] != "4"


def _failure(address: str, statuses: dict[str, tuple[str, str]], notice: str) -> Failure:
    status, reason = statuses.get(address, ("", ""))
    if not reason:
        reason = _reason_in_text(notice, address)
    code, hard = _classify(status, reason)
    if not reason:
        reason = f"status {code}" if code else "reported as failed, no reason given"
    return Failure(address=address, hard=hard, status=code, reason=reason)


def _digest_date(text: str) -> dt.date | None:
    for match in DIGEST_DATE.finditer(text):
        try:
            return dt.date.fromisoformat(match.group(1))
        except ValueError:
            continue
    return None
