"""SMTP delivery: one connection per batch (or pooled across batches), PIPELINING and CHUNKING
when the server offers them, a rate limit, and each outcome named honestly. A connection that
drops before the whole message went out is reopened and the message sent again; one that drops
after (the final dot, or BDAT LAST, written; the answer lost) is `unconfirmed`: the server may
have taken it. Stalls, reconnects and drops are logged."""

from __future__ import annotations

import logging
import re
import select
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from digest.config import check_smtp_url
from digest.mailer.base import DeliveryError
from digest.render import Mail

log = logging.getLogger(__name__)

# A message whose hand-over takes longer than this is logged as a stall.
STALL_SECONDS = 10.0
# A pooled connection idle longer than this is checked (NOOP) before a message goes out: a
# server that closed it meanwhile must be found before the message is written, not after.
IDLE_CHECK_SECONDS = 2.0


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


class Step:
    """How far one transaction got: whether the whole message was handed over (then a lost
    answer leaves its fate unknown), and the last thing written, for the reason."""

    def __init__(self) -> None:
        self.name = "MAIL"
        self.handed_over = False

    def at(self, name: str, *, handed_over: bool = False) -> None:
        self.name, self.handed_over = name, handed_over


class SMTPConnection:
    def __init__(self, config: SMTPConfig, limiter: RateLimiter | None = None) -> None:
        self.config = config
        self.limiter = limiter
        self._smtp: smtplib.SMTP | None = None
        self._pipelining = False
        self._chunking = False
        self._last_used = 0.0

    @property
    def server(self) -> str:
        return f"{self.config.host}:{self.config.port}"

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
            log.error("smtp_login_refused server=%s code=%s", self.server, exc.smtp_code)
            raise DeliveryError(
                f"SMTP login refused: {exc}", permanent=True, unreachable=True
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("smtp_unreachable server=%s error=%s", self.server, exc)
            raise DeliveryError(
                f"cannot reach the SMTP server {self.server}: {exc}",
                permanent=False,
                unreachable=True,
            ) from exc
        self._smtp = smtp
        self._last_used = time.monotonic()
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

    def _alive(self) -> bool:
        """Whether the connection can take a message now. A server that closed it, or said
        something unasked (a 421 before closing), makes the socket readable: found here, before
        a message is written, not after (a message written into a closed connection would be
        lost in an ambiguous way). One idle for a while is asked (NOOP)."""
        smtp = self._smtp
        if smtp is None or smtp.sock is None:
            return False
        try:
            readable, _, _ = select.select([smtp.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if readable:
            return False
        if time.monotonic() - self._last_used < IDLE_CHECK_SECONDS:
            return True
        try:
            return smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def send(self, message: Mail) -> None:
        """Hand one message over; DeliveryError says whether trying again can help, or that
        the message's fate is unknown (`unconfirmed`).

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
            if not self._alive():
                if self._smtp is not None:
                    log.info("smtp_reconnect server=%s reason=closed while idle", self.server)
                self._drop()
                self.open()
            try:
                self._transaction(sender, recipient, payload)
                return
            except _Lost as lost:
                if lost.step.handed_over:
                    log.warning(
                        "smtp_unconfirmed server=%s rcpt=%s step=%s error=%s",
                        self.server,
                        recipient,
                        lost.step.name,
                        lost.error,
                    )
                    raise DeliveryError(
                        f"connection to {self.server} lost after {lost.step.name}, before the "
                        f"server's answer ({lost.error}): the message may have been delivered",
                        permanent=False,
                        unconfirmed=True,
                    ) from lost.error
                log.info(
                    "smtp_reconnect server=%s reason=lost at %s: %s",
                    self.server,
                    lost.step.name,
                    lost.error,
                )
                if attempt == 2 or not lost.retry:
                    raise DeliveryError(
                        f"SMTP connection to {self.server} lost at {lost.step.name}: {lost.error}",
                        permanent=False,
                    ) from lost.error

    def _transaction(self, sender: str, recipient: str, payload: bytes) -> None:
        """One message over the open connection; _Lost when the connection went away."""
        smtp = self._smtp
        if smtp is None:  # the caller opened it
            raise DeliveryError("SMTP connection not open", permanent=False)
        step = Step()
        started = time.monotonic()
        try:
            if self._chunking:
                _chunked(smtp, sender, recipient, payload, step)
            elif self._pipelining:
                _pipelined(smtp, sender, recipient, payload, step)
            else:
                _plain(smtp, sender, recipient, payload, step)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            self._after_error(code)
            log.warning("smtp_refused server=%s rcpt=%s code=%s", self.server, recipient, code)
            raise _smtp_error(code, reason) from exc
        except smtplib.SMTPResponseException as exc:
            self._after_error(exc.smtp_code)
            log.warning(
                "smtp_refused server=%s rcpt=%s code=%s step=%s",
                self.server,
                recipient,
                exc.smtp_code,
                step.name,
            )
            raise _smtp_error(exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Timeouts too: a server silent after the end of the data may have taken it.
            self._drop()
            raise _Lost(step, exc, retry=isinstance(exc, smtplib.SMTPServerDisconnected)) from exc
        finally:
            self._last_used = time.monotonic()
            took = self._last_used - started
            if took > STALL_SECONDS:
                log.warning(
                    "smtp_stall server=%s rcpt=%s seconds=%.1f step=%s",
                    self.server,
                    recipient,
                    took,
                    step.name,
                )

    def _after_error(self, code: int) -> None:
        # 421: the server is closing the channel; the next message needs a new connection.
        if code == 421:
            self._drop()
        elif self._smtp is not None:
            try:
                self._smtp.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()


class _Lost(Exception):
    """The connection went away during a transaction, at `step`."""

    def __init__(self, step: Step, error: BaseException, *, retry: bool) -> None:
        super().__init__(str(error))
        self.step, self.error, self.retry = step, error, retry


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _canonical(data: bytes) -> bytes:
    """The message with CRLF line ends, ending with one (our renderer already makes it so)."""
    if data.count(b"\n") != data.count(b"\r\n") or not data.endswith(b"\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _chunked(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes, step: Step) -> None:
    """One transaction in one round trip (RFC 3030 CHUNKING with RFC 2920 PIPELINING): MAIL,
    RCPT and `BDAT <size> LAST` go out with the message, which needs no dot-stuffing. A server
    that refused the sender or recipient still reads the chunk and answers it with an error,
    so the connection stays in step. `data` has CRLF line ends. Raises smtplib's exceptions."""
    head = f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nBDAT {len(data)} LAST\r\n"
    step.at("BDAT")
    smtp.send(head.encode("ascii") + data)
    step.at("BDAT LAST", handed_over=True)
    mail_code, mail_reply = smtp.getreply()
    if mail_code != 250:
        step.handed_over = False  # refused: whatever follows, it was not taken
    rcpt_code, rcpt_reply = smtp.getreply()
    if rcpt_code not in (250, 251):
        step.handed_over = False
    bdat_code, bdat_reply = smtp.getreply()
    if mail_code != 250:
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, sender)
    if rcpt_code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_reply)})
    if bdat_code != 250:
        raise smtplib.SMTPDataError(bdat_code, bdat_reply)


def _pipelined(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes, step: Step) -> None:
    """One transaction in two round trips instead of four (RFC 2920): MAIL, RCPT and DATA
    go out together, then the message (`data`, with CRLF line ends). Raises smtplib's
    exceptions."""
    step.at("MAIL")
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
    _data(smtp, data, step)


def _plain(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes, step: Step) -> None:
    """MAIL, RCPT, DATA one at a time (a server without PIPELINING)."""
    step.at("MAIL")
    code, reply = smtp.mail(sender)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    step.at("RCPT")
    code, reply = smtp.rcpt(recipient)
    if code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
    step.at("DATA")
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    _data(smtp, data, step)


def _data(smtp: smtplib.SMTP, data: bytes, step: Step) -> None:
    """The message after a 354, then the final dot; a lost answer after the dot is ambiguous."""
    body = _LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
    step.at("message data")
    smtp.send(body + b".\r\n")
    step.at("the final dot", handed_over=True)
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)


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
