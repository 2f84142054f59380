"""The mailer's fault vocabulary, fast: which database errors are worth a retry, and a file
mailer that cannot write fails like a mail server that cannot be reached."""

from __future__ import annotations

import errno
import os
import sqlite3
from email.message import EmailMessage

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from digest.db import is_transient
from digest.mailer import DeliveryError, FileMailer
from digest.render import Mail


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.DatabaseError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.UniqueViolation(), False),
        (psycopg.errors.UndefinedTable(), False),
        (sqlite3.OperationalError("database is locked"), True),
        (OperationalError("SELECT 1", {}, psycopg.OperationalError("gone")), True),
        (IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation()), False),
        (ValueError("not a database error"), False),
    ],
)
def test_which_database_errors_are_worth_trying_again(error, transient):
    assert is_transient(error) is transient


def mail(to: str = "ada@example.com") -> Mail:
    message = EmailMessage()
    message["From"], message["To"] = "digest@example.com", to
    message["Subject"], message["Date"] = "Papers", "Fri, 04 Dec 2026 07:00:00 +0000"
    message["Message-ID"] = f"<{to}@digest.test>"
    message.set_content("hello")
    return Mail(sender="digest@example.com", recipient=to, data=message.as_bytes())


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")],
)
def test_an_outbox_write_error_is_an_unreachable_mailer_with_the_reason_and_no_partial_file(
    tmp_path, monkeypatch, code, reason
):
    real_write = os.write
    written: list[int] = []

    def write_some_then_fail(fd: int, data) -> int:
        if written:
            raise OSError(code, os.strerror(code))
        written.append(real_write(fd, bytes(data[:10])))
        return written[-1]

    monkeypatch.setattr(os, "write", write_some_then_fail)
    with FileMailer(tmp_path).connect() as connection, pytest.raises(DeliveryError) as caught:
        connection.send(mail())
    assert caught.value.unreachable and not caught.value.permanent
    assert reason in str(caught.value) and str(tmp_path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # the half-written temporary file is gone


def test_the_outbox_gets_whole_files_only(tmp_path):
    with FileMailer(tmp_path).connect() as connection:
        connection.send(mail("ada@example.com"))
        connection.send(mail("bob@example.com"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(name.endswith(".eml") for name in files)
