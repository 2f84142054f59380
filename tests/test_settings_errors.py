"""Errors a person can act on (issue 16): each bad setting is one line naming it, exit 1, no
traceback; `digest check` tries every configured part; a future `send --date` is refused."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from digest.cli import main
from digest.config import DEV_SECRET_KEY, Settings
from tests.conftest import SMTPSink

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = "k" * 40


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A good file-mailer setup on a SQLite file in tmp_path, nothing from the caller's DIGEST_*."""
    for name in list(os.environ):
        if name.startswith("DIGEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {
        "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
        "DIGEST_DATA_DIR": str(tmp_path / "instance"),
        "DIGEST_OUTBOX_DIR": str(tmp_path / "outbox"),
        "DIGEST_SECRET_KEY": GOOD_KEY,
        "DIGEST_ENCODER": "tfidf",
    }


def invoke(args: list[str], env: dict[str, str], **overrides: str) -> Result:
    return CliRunner().invoke(main, args, env={**env, **overrides})


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit 1 through click (SystemExit, not an escaped exception), one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"DIGEST_DATABASE_URL": "mysql://u:pw@db/digest"}, ["DIGEST_DATABASE_URL", "mysql://"]),
        ({"DIGEST_DATABASE_URL": "not a url"}, ["DIGEST_DATABASE_URL", "cannot read"]),
        ({"DIGEST_DEFAULT_TIMEZONE": "Mars/Olympus"}, ["DIGEST_DEFAULT_TIMEZONE", "Mars"]),
        ({"DIGEST_DEFAULT_TIMEZONE": "America"}, ["DIGEST_DEFAULT_TIMEZONE", "America"]),
        ({"DIGEST_SMTP_URL": "http://mail.example.org"}, ["DIGEST_SMTP_URL", "smtp://"]),
        ({"DIGEST_SMTP_URL": "smtp://mail.example.org:twenty"}, ["DIGEST_SMTP_URL", "port"]),
        ({"DIGEST_SMTP_URL": "smtp://:25"}, ["DIGEST_SMTP_URL", "no host"]),
        ({"DIGEST_ENV": "production", "DIGEST_SECRET_KEY": "short"}, ["DIGEST_SECRET_KEY"]),
        ({"DIGEST_ENV": "production", "DIGEST_SECRET_KEY": ""}, ["DIGEST_SECRET_KEY"]),
        (
            {"DIGEST_DATABASE_URL": "sqlite:////no/such/folder/digest.db"},
            ["DIGEST_DATABASE_URL", "/no/such/folder", "does not exist"],
        ),
        (
            {"DIGEST_DATABASE_URL": "postgresql://digest:hunter2@127.0.0.1:1/digest"},
            ["DIGEST_DATABASE_URL", "cannot connect", "127.0.0.1:1", "refused"],
        ),
    ],
)
@pytest.mark.parametrize("args", [["status"], ["subscribers", "list"], ["db", "current"]])
def test_a_bad_setting_is_one_line_naming_it(
    env: dict[str, str], overrides: dict[str, str], needles: list[str], args: list[str]
) -> None:
    line = assert_one_line_error(invoke(args, env, **overrides), *needles)
    assert "hunter2" not in line and ":pw@" not in line  # passwords are never shown


def test_postgres_scheme_is_the_alias_of_postgresql() -> None:
    settings = Settings(database_url="postgres://digest:pw@db.example.org:5432/digest")
    assert settings.database_url == "postgresql://digest:pw@db.example.org:5432/digest"


def test_a_refused_postgresql_role_is_one_line(
    env: dict[str, str], postgres_url: str | None
) -> None:
    if not postgres_url:
        pytest.skip("PostgreSQL not configured (set DIGEST_TEST_POSTGRES_URL)")
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(username="no_such_role_digest", password="hunter2")
    as_postgres = url.render_as_string(hide_password=False).replace(
        url.drivername + "://", "postgres://", 1
    )
    line = assert_one_line_error(
        invoke(["status"], env, DIGEST_DATABASE_URL=as_postgres),
        "DIGEST_DATABASE_URL",
        "cannot connect",
        "no_such_role_digest",
    )
    assert "hunter2" not in line


# --- digest send --date in the future --------------------------------------------------------


def test_send_refuses_a_date_after_today(env: dict[str, str]) -> None:
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    line = assert_one_line_error(
        invoke(["send", "--date", tomorrow], env), f"--date {tomorrow}", "--allow-future"
    )
    assert "after today" in line
    # Neither a dry run (it records nothing) nor an explicit flag is refused.
    looked = invoke(["send", "--date", tomorrow, "--dry-run"], env)
    assert looked.exit_code == 0, looked.output
    assert looked.output.startswith("would send 0")
    sent = invoke(["send", "--date", tomorrow, "--allow-future"], env)
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("sent 0")


def test_send_takes_today(env: dict[str, str]) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    result = invoke(["send", "--date", today], env)
    assert result.exit_code == 0, result.output


# --- digest check ----------------------------------------------------------------------------


def check_lines(result: Result) -> dict[str, str]:
    assert "Traceback" not in result.output
    lines = {}
    for line in result.output.strip().splitlines():
        name, _, rest = line.partition(":")
        lines[name] = rest.strip()
    assert list(lines) == [
        "database",
        "redis",
        "mailer",
        "secret key",
        "base URL",
        "files",
        "encoder",
    ], result.output
    return lines


def test_check_passes_on_a_good_setup(env: dict[str, str], redis_url: str) -> None:
    assert invoke(["db", "upgrade"], env).exit_code == 0
    result = invoke(["check"], env, DIGEST_REDIS_URL=redis_url)
    lines = check_lines(result)
    assert all(rest.startswith("ok") for rest in lines.values()), result.output
    assert result.exit_code == 0
    assert "(head)" in lines["database"]
    assert "file:" in lines["mailer"] and "nothing is sent" in lines["mailer"]
    assert not (Path.cwd() / "outbox").exists()  # the check writes no mail


def test_check_loads_the_encoder_or_says_it_falls_back(env: dict[str, str]) -> None:
    result = invoke(["check"], env, DIGEST_ENCODER="minilm")
    encoder = check_lines(result)["encoder"]
    assert encoder.startswith("ok"), encoder
    assert "loads ok" in encoder or "falls back to tfidf" in encoder


def test_check_fails_on_each_bad_part(env: dict[str, str]) -> None:
    result = invoke(
        ["check"],
        env,
        DIGEST_REDIS_URL="redis://127.0.0.1:1/0",
        DIGEST_SECRET_KEY=DEV_SECRET_KEY,
        DIGEST_BASE_URL="ftp://digest.example.org",
        DIGEST_SEEDS_DIR=str(Path.cwd() / "no-seeds"),
    )
    lines = check_lines(result)
    assert result.exit_code == 1
    assert lines["redis"].startswith("FAIL") and "DIGEST_REDIS_URL" in lines["redis"]
    assert lines["secret key"].startswith("FAIL") and "public" in lines["secret key"]
    assert lines["base URL"].startswith("FAIL") and "DIGEST_BASE_URL" in lines["base URL"]
    assert lines["files"].startswith("FAIL") and "no-seeds" in lines["files"]
    # An empty database is not migrated: the line says what to run.
    assert lines["database"].startswith("FAIL") and "digest db upgrade" in lines["database"]
    assert lines["mailer"].startswith("ok")


def test_check_fails_on_an_unreachable_database(env: dict[str, str]) -> None:
    result = invoke(
        ["check"],
        env,
        DIGEST_DATABASE_URL="postgresql://digest:hunter2@127.0.0.1:1/digest",
        DIGEST_REDIS_URL="redis://127.0.0.1:1/0",
    )
    database = check_lines(result)["database"]
    assert result.exit_code == 1
    assert database.startswith("FAIL") and "cannot connect" in database
    assert "hunter2" not in result.output


def test_check_tries_smtp_without_sending(env: dict[str, str], smtp_server: SMTPSink) -> None:
    ok = invoke(["check"], env, DIGEST_MAILER="smtp", DIGEST_SMTP_URL=smtp_server.url)
    mailer = check_lines(ok)["mailer"]
    assert mailer.startswith("ok") and "EHLO ok" in mailer, mailer
    assert smtp_server.connections == 1 and smtp_server.messages == []

    closed = invoke(["check"], env, DIGEST_MAILER="smtp", DIGEST_SMTP_URL="smtp://127.0.0.1:1")
    mailer = check_lines(closed)["mailer"]
    assert mailer.startswith("FAIL") and "DIGEST_SMTP_URL" in mailer, mailer
    assert closed.exit_code == 1


# --- the worker ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"DIGEST_REDIS_URL": "redis://127.0.0.1:1/0"},
            "digest: DIGEST_REDIS_URL: cannot reach Redis at redis://127.0.0.1:1/0",
        ),
        (
            {"DIGEST_DEFAULT_TIMEZONE": "Mars/Olympus"},
            "digest: bad settings: DIGEST_DEFAULT_TIMEZONE: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"DIGEST_DATABASE_URL": "postgres://digest:hunter2@127.0.0.1:1/digest"},
            "digest: DIGEST_DATABASE_URL: cannot connect to postgresql://digest:***@127.0.0.1:1",
        ),
    ],
)
def test_worker_refuses_to_start_with_one_line(
    env: dict[str, str], tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    process_env.update(env)
    process_env.update(overrides)
    process_env["PYTHONPATH"] = str(PROJECT_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "solo"],
        cwd=tmp_path,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(expected), last
