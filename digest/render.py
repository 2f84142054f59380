"""Pure rendering: a context in, an EmailMessage or HTML page out, from templates/."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape


@lru_cache(maxsize=8)
def template_environment(templates_dir: Path) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(templates_dir)),
        autoescape=select_autoescape(["html", "xml"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def short_summary(text: str, limit: int = 320) -> str:
    """The text cut at a word boundary near `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:.")
    return cut + "…"


def format_authors(authors: list[str], limit: int = 6) -> str:
    if len(authors) <= limit:
        return ", ".join(authors)
    return ", ".join(authors[:limit]) + f" and {len(authors) - limit} more"


@dataclass(frozen=True)
class DigestEntry:
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


def _message(envelope: Envelope, subject: str, text: str, html: str) -> EmailMessage:
    for value in (subject, envelope.recipient, envelope.sender_name):
        if "\r" in value or "\n" in value:
            raise ValueError("line breaks are not allowed in a header")
    message = EmailMessage()
    message["From"] = Address(envelope.sender_name, addr_spec=envelope.sender_address)
    message["To"] = envelope.recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(envelope.now)
    message["Message-ID"] = envelope.message_id
    for name, value in envelope.extra_headers.items():
        message[name] = value
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def render_digest_html(templates_dir: Path, context: DigestContext) -> str:
    env = template_environment(templates_dir)
    return env.get_template("email/digest/body.html").render(**vars(context))


def render_digest(templates_dir: Path, context: DigestContext, envelope: Envelope) -> EmailMessage:
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
) -> EmailMessage:
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
