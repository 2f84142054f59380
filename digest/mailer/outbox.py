"""The file mailer (each message an .eml file in the outbox, openable in any mail client) and
the console mailer. A file that cannot be written fails like a mail server that cannot be
reached: the reason (disk full, read-only, no permission), nothing half-written left behind."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO

from digest.mailer.base import DeliveryError
from digest.render import Mail

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}


def outbox_filename(message: Mail) -> str:
    """A readable, unique file name: date, recipient and a hash of the Message-ID."""
    when = parsedate_to_datetime(str(message["Date"])).strftime("%Y%m%d-%H%M%S")
    to = _UNSAFE.sub("_", message.recipient)[:80]
    digest = hashlib.sha256(str(message["Message-ID"]).encode()).hexdigest()[:10]
    return f"{when}-{to}-{digest}.eml"


def _write_atomically(path: Path, data: bytes) -> None:
    """The whole file or nothing: written to a temporary name, flushed to disk, renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)  # atomic: a reader never sees half a message
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


class FileConnection:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: list[Path] = []

    def send(self, message: Mail) -> None:
        path = self.directory / outbox_filename(message)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, message.data)
        except OSError as exc:
            reason = _REASONS.get(exc.errno or 0, exc.strerror or exc.__class__.__name__)
            log.warning("outbox_write_failed dir=%s reason=%s", self.directory, reason)
            # The next message would meet the same disk: the rest of the batch waits too.
            raise DeliveryError(
                f"cannot write to the outbox {self.directory}: {reason}",
                permanent=False,
                unreachable=True,
            ) from exc
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
