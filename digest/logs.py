"""Logging for every process: one setup at each edge (`configure_logging`), one line per event
(`event`), text or JSON by a setting, and a filter that blanks signed links and tokens.

The conventions (docs/architecture.md, "Logs"): a logger per module (`logging.getLogger(
__name__)`); a line starts with the event's name (`ingest.finished`) followed by `key=value`
ids and counts; never a token or a signed link. The filter is the second defence: it redacts
what a careless line, an exception or a library would still let through.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import IO, TYPE_CHECKING, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from digest.config import Settings

REDACTED = "<token>"
# The pages whose path carries a signed token. Only where a URL path starts (start of text,
# after a space, quote, bracket or `=`, or after `scheme://host`), so that a file path such as
# /srv/app/digest/delivery/send.py in a traceback stays readable.
SIGNED_PATH = re.compile(
    r"(^|[\s'\"(<\[=]|://[^/\s'\"<>]*)/(confirm|unsubscribe|preferences|feedback|digest)/"
    r"[^\s/?#'\"<>]{8,}"
)
# An itsdangerous token anywhere (payload.timestamp.signature, base64url, the payload maybe
# compressed: a leading dot): in a mail subject, a query string, an exception's text.
_TOKEN_CHAR = r"[A-Za-z0-9_\-]"
TOKEN = re.compile(
    rf"(?<!{_TOKEN_CHAR})\.?{_TOKEN_CHAR}{{8,}}+\.{_TOKEN_CHAR}{{4,}}+\.{_TOKEN_CHAR}{{16,}}+"
)
# The signed part of a bounce address (VERP: bounces+<delivery id>-<signature>@domain,
# tokens.make_bounce_token), in any letter case: the delivery id stays readable.
BOUNCE_TOKEN = re.compile(r"\+([1-9][0-9]{0,17})-[A-Za-z2-7]{16}@")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The LogRecord attributes `extra` may not set; an event field of that name gets a `_`.
_RESERVED = frozenset(RESERVED_ATTRS) | {"message", "asctime"}


def redact(text: str) -> str:
    """`text` with every signed-link token, token-shaped string and bounce-address signature
    replaced by <token>."""
    if "/" not in text and "." not in text and "+" not in text:
        return text
    text = SIGNED_PATH.sub(rf"\1/\2/{REDACTED}", text)
    text = BOUNCE_TOKEN.sub(rf"+\1-{REDACTED}@", text)
    return TOKEN.sub(REDACTED, text)


class RedactFilter(logging.Filter):
    """Blanks tokens in a record before any handler formats it: its message, its exception
    and stack text, and the string fields an `extra` gave it. On a handler it sees every record
    that reaches the handler, whichever logger made it (waitress, celery, flask, ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info:
            # Rendered once here, redacted; both formatters print exc_text when exc_info is gone.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class _DigestHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs (and replaces when called again). Without a
    stream of its own it writes to whatever sys.stderr is when a record comes (click's test
    runner and Celery swap it)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream)
        self._own_stream = stream

    @property
    def stream(self) -> IO[str]:
        return self._own_stream if self._own_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._own_stream = value


def _utc_time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`2026-12-03T07:00:00.123+00:00 INFO digest.ingestion: ingest.finished source=hf ...`"""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc_time(record)


class JSONFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, message, then the event and its fields."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc_time(record)


def _formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JSONFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return TextFormatter(TEXT_FORMAT)


def configure_logging(
    settings: Settings, *, level: str | None = None, stream: IO[str] | None = None
) -> None:
    """Send every logger's records to stderr (or `stream`), formatted as DIGEST_LOG_FORMAT
    says, at DIGEST_LOG_LEVEL (or `level`), through the redaction filter.

    Called once at each edge: the CLI, the web app's WSGI entry and `digest serve`, Celery's
    worker and beat (its setup_logging signal). Calling it again replaces its handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _DigestHandler)]:
        root.removeHandler(handler)
    handler = _DigestHandler(stream)
    handler.setFormatter(_formatter(settings.log_format))
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(level or settings.log_level)
    # Libraries that talk too much at INFO: their warnings still come through.
    for name in ("urllib3", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(ch.isspace() or ch in "\"'=" for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def event(
    logger: logging.Logger,
    name: str,
    /,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    stacklevel: int = 1,
    **fields: Any,
) -> None:
    """Log one event as one line, `name key=value ...` (values with spaces quoted); in JSON
    the event and each field are keys of their own as well.

    Ids and counts, never a token or a signed link: `event(log, "ingest.finished",
    source="hf", run=12, new=3)`. A field whose value is None is left out. `stacklevel` as in
    `logging`: a helper that logs for its caller passes 2."""
    if not logger.isEnabledFor(level):
        return
    fields = {key: value for key, value in fields.items() if value is not None}
    text = " ".join([name, *(f"{key}={_value(value)}" for key, value in fields.items())])
    extra = {"event": name}
    extra.update({(f"{key}_" if key in _RESERVED else key): value for key, value in fields.items()})
    logger.log(level, "%s", text, exc_info=exc_info, extra=extra, stacklevel=stacklevel + 1)
