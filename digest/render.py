"""Pure rendering: a context in, a Mail or HTML page out, from templates/."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.utils import format_datetime, formataddr
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from digest.papers import safe_url


def href(value: object) -> str:
    """The `safe_url` filter of every template: a paper's URL if it is http(s), else "".

    Checked again here, not only when a paper is stored, so that a URL from an older store or
    a source that skipped validation never becomes a `javascript:` link.
    """
    return safe_url(value) or ""


def install_filters(env: Environment) -> Environment:
    """The filters our templates use, on any Jinja environment (ours, or Flask's)."""
    env.filters["safe_url"] = href
    return env


@lru_cache(maxsize=8)
def template_environment(templates_dir: Path) -> Environment:
    return install_filters(
        Environment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=select_autoescape(["html", "xml"], default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # Templates change with a deploy, not while a worker runs: no stat() per render.
            auto_reload=False,
        )
    )


@lru_cache(maxsize=16384)
def short_summary(text: str, limit: int = 320) -> str:
    """The text cut at a word boundary near `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:.")
    return cut + "…"


def format_authors(authors: Sequence[str], limit: int = 6) -> str:
    # The same papers go to many subscribers in a run: each paper's line is made once.
    return _format_authors(tuple(authors), limit)


@lru_cache(maxsize=16384)
def _format_authors(authors: tuple[str, ...], limit: int) -> str:
    if len(authors) <= limit:
        return ", ".join(authors)
    return ", ".join(authors[:limit]) + f" and {len(authors) - limit} more"


class DigestEntry(NamedTuple):
    """One paper of a digest as the templates show it (a tuple: a digest makes ten of them,
    a run a million)."""

    paper_id: str
    title: str
    authors: str
    summary: str
    url: str
    why: str
    like_url: str
    dislike_url: str


@dataclass(frozen=True)
class Envelope:
    """Who a message is from and to, and the headers every message carries."""

    sender_name: str
    sender_address: str
    recipient: str
    message_id: str
    now: dt.datetime
    extra_headers: dict[str, str] = field(default_factory=dict)
    # The envelope sender (SMTP MAIL FROM, which the receiving server writes as Return-Path):
    # where bounces go. None: sender_address.
    return_path: str | None = None


@dataclass(frozen=True)
class DigestContext:
    recipient: str
    digest_date: dt.date
    entries: list[DigestEntry]
    web_url: str
    preferences_url: str
    unsubscribe_url: str
    unsubscribe_mailto: str
    base_url: str
    from_name: str


@dataclass(frozen=True)
class Mail:
    """A rendered message: envelope addresses (`sender` is the MAIL FROM) and the RFC 5322
    bytes to hand to a server.

    Built directly as bytes: the email package's generator costs about 1 ms a message, more than
    everything else in rendering, which matters at 100,000 digests a day. `message()` parses it
    back into an EmailMessage for anyone who wants the rich API.
    """

    sender: str
    recipient: str
    data: bytes
    # True when every line already ends with CRLF (this module's messages): the mailer then
    # sends the bytes as they are instead of checking them again.
    canonical: bool = False

    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)

    def __getitem__(self, name: str) -> str | None:
        value = self.headers().get(name)
        return None if value is None else str(value)

    def headers(self) -> Message:
        return BytesHeaderParser(policy=policy.default).parsebytes(self.data)

    def as_bytes(self) -> bytes:
        return self.data

    def as_string(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _encoded_words(value: str, chunk: int = 45) -> str:
    """RFC 2047 base64 encoded-words, folded; each word holds whole UTF-8 characters.

    email.header.Header does the same a character at a time, several times slower.
    """
    data = value.encode("utf-8")
    words, start = [], 0
    while start < len(data):
        end = min(start + chunk, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a character
            end -= 1
        words.append(data[start:end])
        start = end
    if not words:
        words.append(b"")
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode()}?=" for w in words)


def _header(value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("line breaks are not allowed in a header")
    if not value.isascii():
        return _encoded_words(value)
    # Long lists of <uri>s (List-Unsubscribe) are folded between items, as RFC 5322 prefers.
    return value.replace(">, <", ">,\r\n <") if len(value) > 200 else value


_CRLF = np.frombuffer(b"\r\n", dtype=np.uint8)


def _base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ended by CRLF (RFC 2045): one C call for the
    whole text, and the line ends put in as a column of a (lines x 78) byte array, instead
    of base64.encodebytes' call per 57 bytes or a slice per line (a third of the time)."""
    encoded = binascii.b2a_base64(data, newline=False)
    full = len(encoded) // 76 * 76
    lines = np.empty((full // 76, 78), dtype=np.uint8)
    lines[:, :76] = np.frombuffer(encoded, dtype=np.uint8, count=full).reshape(-1, 76)
    lines[:, 76:] = _CRLF
    tail = encoded[full:]
    return lines.tobytes() + (tail + b"\r\n" if tail else b"")


def _longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\n")))


def _body_part(content_type: str, text: str, boundary: bytes) -> bytes:
    """A text part in its canonical form (CRLF line ends, RFC 2045): as it is (7bit) when it
    is ASCII with lines of at most 998 characters, else in base64.

    HTML says any character in ASCII (`&#128077;` is 👍), so a digest's HTML part, the
    larger one, goes out as written: no encoding to do, a third smaller than base64, and no
    8BITMIME needed from the server. Line ends are made canonical on the encoded bytes, where
    replacing is several times cheaper than on a text holding one emoji (four bytes a
    character).
    """
    if content_type == "text/html":
        data = text.encode("ascii", "xmlcharrefreplace")
    else:
        data = text.encode("utf-8")
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # RFC 5322: at most 998 characters a line, plus CRLF.
    if data.isascii() and boundary not in data and _longest_line(data) <= 999:
        encoding, body = "7bit", data
    else:
        encoding, body = "base64", _base64_lines(data)
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body


def _message(envelope: Envelope, subject: str, text: str, html: str) -> Mail:
    # "=_" never occurs in base64, and the parts as written are checked for the boundary.
    boundary = "=_digest_" + hashlib.sha1(envelope.message_id.encode()).hexdigest()[:24]
    headers = [
        ("From", formataddr((envelope.sender_name, envelope.sender_address), "utf-8")),
        ("To", envelope.recipient),
        ("Subject", subject),
        ("Date", format_datetime(envelope.now)),
        ("Message-ID", envelope.message_id),
        *envelope.extra_headers.items(),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    head = "".join(f"{name}: {_header(value)}\r\n" for name, value in headers)
    dash = f"--{boundary}\r\n".encode()
    data = b"".join(
        [
            head.encode("ascii"),
            b"\r\n",
            dash,
            _body_part("text/plain", text, boundary.encode()),
            b"\r\n",
            dash,
            _body_part("text/html", html, boundary.encode()),
            b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
    )
    return Mail(
        sender=envelope.return_path or envelope.sender_address,
        recipient=envelope.recipient,
        data=data,
        canonical=True,
    )


def render_digest_html(templates_dir: Path, context: DigestContext) -> str:
    env = template_environment(templates_dir)
    return env.get_template("email/digest/body.html").render(**vars(context))


def render_digest(templates_dir: Path, context: DigestContext, envelope: Envelope) -> Mail:
    env = template_environment(templates_dir)
    values = vars(context)
    subject = " ".join(env.get_template("email/digest/subject.txt").render(**values).split())
    text = env.get_template("email/digest/body.txt").render(**values)
    html = env.get_template("email/digest/body.html").render(**values)
    headers = {
        # RFC 2369 and RFC 8058: mail clients show an unsubscribe button and POST one-click.
        "List-Unsubscribe": f"<{context.unsubscribe_url}>, <{context.unsubscribe_mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{context.from_name} <digest.{envelope.sender_address.split('@')[-1]}>",
        "X-Digest-Date": context.digest_date.isoformat(),
        **envelope.extra_headers,
    }
    return _message(Envelope(**{**vars(envelope), "extra_headers": headers}), subject, text, html)


def render_confirmation(
    templates_dir: Path,
    *,
    envelope: Envelope,
    confirm_url: str,
    from_name: str,
    base_url: str,
    valid_days: int,
) -> Mail:
    env = template_environment(templates_dir)
    values = {
        "recipient": envelope.recipient,
        "confirm_url": confirm_url,
        "from_name": from_name,
        "base_url": base_url,
        "valid_days": valid_days,
    }
    subject = " ".join(env.get_template("email/confirm/subject.txt").render(**values).split())
    text = env.get_template("email/confirm/body.txt").render(**values)
    html = env.get_template("email/confirm/body.html").render(**values)
    return _message(envelope, subject, text, html)
