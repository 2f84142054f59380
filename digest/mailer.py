"""One sender interface with SMTP, file (outbox) and console backends, chosen by a setting."""

from __future__ import annotations

import hashlib
import re
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from digest.config import Settings, check_smtp_url
from digest.render import Mail


class DeliveryError(Exception):
    """A message could not be handed over. `permanent` failures must not be retried."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class Connection(Protocol):
    def send(self, message: Mail) -> None: ...


class Mailer(Protocol):
    """`with mailer.connect() as conn: conn.send(msg)` – one connection for a batch."""

    def connect(self) -> AbstractContextManager[Connection]: ...


@dataclass(frozen=True)
class SMTPConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False  # smtps://
    starttls: bool = False
    timeout: float = 30.0
    # RFC 2920 command pipelining: "auto" when the server offers it, "always", or "never".
    pipelining: str = "auto"

    @classmethod
    def from_url(cls, url: str, timeout: float = 30.0) -> SMTPConfig:
        check_smtp_url(url)  # a ValueError says what is wrong
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
            starttls=query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"),
            timeout=timeout,
            pipelining=query.get("pipelining", ["auto"])[0].lower(),
        )


class RateLimiter:
    """A token bucket: at most `rate` messages a second on average, bursts of `burst`."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


class SMTPConnection:
    def __init__(self, config: SMTPConfig, limiter: RateLimiter | None = None) -> None:
        self.config = config
        self.limiter = limiter
        self._smtp: smtplib.SMTP | None = None
        self._pipelining = False
        self._chunking = False

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.sock is not None

    def open(self) -> None:
        cfg = self.config
        try:
            if cfg.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
                if cfg.starttls:
                    smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP login refused: {exc}", permanent=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(
                f"cannot reach the SMTP server {cfg.host}:{cfg.port}: {exc}", permanent=False
            ) from exc
        self._smtp = smtp
        self._pipelining = cfg.pipelining == "always" or (
            cfg.pipelining == "auto" and smtp.has_extn("pipelining")
        )
        # RFC 3030 BDAT with pipelining: a whole transaction in one round trip.
        self._chunking = self._pipelining and smtp.has_extn("chunking")

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._smtp = None

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
            self._smtp = None

    def send(self, message: Mail) -> None:
        """Hand one message over; DeliveryError says whether trying again can help.

        A connection found closed before the message went out is reopened once.
        """
        if self.limiter is not None:
            self.limiter.acquire()
        sender, recipient = message.sender, message.recipient
        if not (sender.isascii() and recipient.isascii()):
            # An address stored before addresses were checked for this: never sendable here.
            raise DeliveryError(
                f"{recipient}: an address with non-ASCII characters needs SMTPUTF8, "
                "which digest does not send",
                permanent=True,
            )
        # Our renderer writes CRLF line ends (it says so); anything else is made canonical here.
        payload = message.data if message.canonical else _canonical(message.data)
        for attempt in (1, 2):
            if not self.is_open:
                self.open()
            smtp = self._smtp
            if smtp is None:  # open() either connects or raises
                raise DeliveryError("SMTP connection not open", permanent=False)
            try:
                if self._chunking:
                    refused = _chunked(smtp, sender, recipient, payload)
                elif self._pipelining:
                    refused = _pipelined(smtp, sender, recipient, payload)
                else:
                    refused = smtp.sendmail(sender, [recipient], payload)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 2:
                    raise DeliveryError(f"SMTP connection lost: {exc}", permanent=False) from exc
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                code, reason = next(iter(exc.recipients.values()))
                self._after_error(code)
                raise _smtp_error(code, reason) from exc
            except smtplib.SMTPResponseException as exc:
                self._after_error(exc.smtp_code)
                raise _smtp_error(exc.smtp_code, exc.smtp_error) from exc
            except OSError as exc:
                self._drop()
                raise DeliveryError(f"SMTP connection failed: {exc}", permanent=False) from exc
            if refused:
                code, reason = next(iter(refused.values()))
                raise _smtp_error(code, reason)
            return

    def _after_error(self, code: int) -> None:
        # 421: the server is closing the channel; the next message needs a new connection.
        if code == 421:
            self._drop()
        elif self._smtp is not None:
            try:
                self._smtp.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _canonical(data: bytes) -> bytes:
    """The message with CRLF line ends, ending with one (our renderer already makes it so)."""
    if data.count(b"\n") != data.count(b"\r\n") or not data.endswith(b"\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _chunked(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> dict[str, Any]:
    """One transaction in one round trip (RFC 3030 CHUNKING with RFC 2920 PIPELINING): MAIL,
    RCPT and `BDAT <size> LAST` go out with the message, which needs no dot-stuffing. A server
    that refused the sender or recipient still reads the chunk and answers it with an error,
    so the connection stays in step. `data` has CRLF line ends. Raises smtplib's exceptions
    like sendmail does."""
    body = data
    head = f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nBDAT {len(body)} LAST\r\n"
    smtp.send(head.encode("ascii") + body)
    mail_code, mail_reply = smtp.getreply()
    rcpt_code, rcpt_reply = smtp.getreply()
    bdat_code, bdat_reply = smtp.getreply()
    if mail_code != 250:
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if rcpt_code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    if bdat_code != 250:
        raise smtplib.SMTPDataError(bdat_code, bdat_reply)
    return {}


def _pipelined(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> dict[str, Any]:
    """One transaction in two round trips instead of four (RFC 2920): MAIL, RCPT and DATA
    go out together, then the message (`data`, with CRLF line ends). Raises smtplib's
    exceptions like sendmail does."""
    smtp.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii"))
    mail_code, mail_reply = smtp.getreply()
    rcpt_code, rcpt_reply = smtp.getreply()
    data_code, data_reply = smtp.getreply()
    accepted = mail_code == 250 and rcpt_code in (250, 251)
    if data_code == 354 and not accepted:
        smtp.send(b".\r\n")  # the server wants a message we will not send: end it empty
        smtp.getreply()
    if mail_code != 250:
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if rcpt_code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    if data_code != 354:
        raise smtplib.SMTPDataError(data_code, data_reply)
    body = _LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
    smtp.send(body + b".\r\n")
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return {}


def _smtp_error(code: int, reason: bytes | str) -> DeliveryError:
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    return DeliveryError(f"SMTP {code} {text}", permanent=500 <= code < 600, code=code)


class SMTPMailer:
    """SMTP: one connection per batch, or with `pooled` one kept open and reused across batches
    (a long-lived worker process); an optional rate limit shared by its connections."""

    def __init__(
        self, config: SMTPConfig, limiter: RateLimiter | None = None, *, pooled: bool = False
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.pooled = pooled
        self._idle: SMTPConnection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connect(self) -> Iterator[SMTPConnection]:
        with self._lock:
            connection, self._idle = self._idle, None
        if connection is None or not connection.is_open:
            connection = SMTPConnection(self.config, self.limiter)
            connection.open()
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        if self.pooled:
            with self._lock:
                if self._idle is None and connection.is_open:
                    self._idle = connection
                    return
        connection.close()

    def close(self) -> None:
        with self._lock:
            connection, self._idle = self._idle, None
        if connection is not None:
            connection.close()


_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def outbox_filename(message: Mail) -> str:
    """A readable, unique file name: date, recipient and a hash of the Message-ID."""
    when = parsedate_to_datetime(str(message["Date"])).strftime("%Y%m%d-%H%M%S")
    to = _UNSAFE.sub("_", message.recipient)[:80]
    digest = hashlib.sha256(str(message["Message-ID"]).encode()).hexdigest()[:10]
    return f"{when}-{to}-{digest}.eml"


class FileConnection:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: list[Path] = []

    def send(self, message: Mail) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / outbox_filename(message)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(message.data)
        tmp.replace(path)  # atomic: a reader never sees half a message
        self.written.append(path)


class FileMailer:
    """Writes each message as an .eml file, openable in any mail client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def connect(self) -> Iterator[FileConnection]:
        yield FileConnection(self.directory)


class ConsoleConnection:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def send(self, message: Mail) -> None:
        self.out.write(message.as_string() + "\n" + "=" * 72 + "\n")


class ConsoleMailer:
    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out

    @contextmanager
    def connect(self) -> Iterator[ConsoleConnection]:
        yield ConsoleConnection(self.out or sys.stdout)


def make_mailer(
    kind: str,
    *,
    outbox_dir: Path,
    smtp_url: str,
    smtp_timeout: float,
    rate_per_second: float = 0.0,
    rate_burst: int = 50,
    pooled: bool = False,
) -> Mailer:
    if kind == "smtp":
        limiter = RateLimiter(rate_per_second, rate_burst) if rate_per_second > 0 else None
        config = SMTPConfig.from_url(smtp_url, timeout=smtp_timeout)
        return SMTPMailer(config, limiter, pooled=pooled)
    if kind == "file":
        return FileMailer(outbox_dir)
    if kind == "console":
        return ConsoleMailer()
    raise ValueError(f"unknown mailer {kind!r}: use smtp, file or console")


def mailer_for(settings: Settings, *, pooled: bool = False) -> Mailer:
    """The mailer the settings choose; `pooled` keeps an SMTP connection open between uses."""
    return make_mailer(
        settings.mailer,
        outbox_dir=settings.outbox_dir,
        smtp_url=settings.smtp_url,
        smtp_timeout=settings.smtp_timeout,
        rate_per_second=settings.smtp_rate_per_second,
        rate_burst=settings.smtp_rate_burst,
        pooled=pooled,
    )
