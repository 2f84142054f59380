"""Shared fixtures: settings on a temporary store, SQLite and PostgreSQL engines, a real SMTP
server (aiosmtpd on loopback), Redis, and real Celery worker processes.

CI sets DIGEST_TEST_REQUIRE_SERVICES=1: a missing Redis or PostgreSQL is then a failure, not a
skip. DIGEST_TEST_POSTGRES_URL (an admin URL such as postgresql://postgres@127.0.0.1:5432/test)
makes every store test run on PostgreSQL as well as SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from digest.config import Settings
from digest.db import create_schema, make_engine

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("DIGEST_TEST_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get("DIGEST_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("DIGEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "test-secret-key-0123456789abcdef"
# Modules that build the process-wide settings on import (workers.app) keep a generated secret
# key in DIGEST_DATA_DIR: in a test run, a folder of its own rather than the checkout.
os.environ.setdefault("DIGEST_DATA_DIR", str(Path(tempfile.mkdtemp(prefix="digest-test-data-"))))


@pytest.fixture(autouse=True)
def _root_logger_as_it_was() -> Iterator[None]:
    """The `digest` command run in-process (click's runner) configures logging for the whole
    process (digest.logs.configure_logging): undo it, so no test depends on the order."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def service_missing(what: str) -> None:
    """Skip locally, fail in CI: integration tests must never silently not run there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (DIGEST_TEST_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "secret_key": SECRET,
        "database_url": f"sqlite:///{tmp_path / 'digest.db'}",
        "outbox_dir": tmp_path / "outbox",
        "mailer": "file",
        "base_url": "https://digest.test",
        "from_address": "digest@digest.test",
        "unsubscribe_mailto": "unsubscribe@digest.test",
        "redis_url": REDIS_URL,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not POSTGRES_ADMIN_URL:
        yield None
        return
    import psycopg

    name = f"digest_test_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at {admin} is required but unreachable: {exc}")
        yield None
        return
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    if url is None:
        if REQUIRE_SERVICES:
            pytest.fail("DIGEST_TEST_POSTGRES_URL must be set when services are required")
        pytest.skip("PostgreSQL not configured (set DIGEST_TEST_POSTGRES_URL)")
    engine = make_engine(url)
    from sqlmodel import SQLModel

    SQLModel.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    engine.dispose()
    yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded_store(engine: Engine) -> Iterator[Session]:
    """A session on the store (SQLite, and PostgreSQL when set) holding the test papers
    (tests.factories.diffusion_papers: twelve on diffusion models, one on legged robots)."""
    from tests.factories import diffusion_papers, store_papers

    with Session(engine) as session:
        store_papers(session, diffusion_papers())
        yield session


@pytest.fixture
def db_settings(tmp_path: Path, db_url: str) -> Settings:
    """Settings whose database is the parametrised one (SQLite, and PostgreSQL when set)."""
    return make_settings(tmp_path, database_url=db_url)


# --- SMTP ------------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SMTPSink:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    # Called with the recipient of each RCPT; returns an SMTP reply to refuse it, or None.
    refuse_rcpt: Callable[[str], str | None] | None = None
    # Called with the number of each DATA (1, 2, ...); returns a reply to refuse it, or None.
    fail_data: Callable[[int], str | None] | None = None
    # DATA numbers at which the server drops the connection without accepting the message.
    drop_at: set[int] = field(default_factory=set)
    # A DATA number at which the server holds the message (no reply) until `release` is set;
    # it is then refused. `holding` is set while it waits.
    hold_at: int | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    data_count: int = 0
    rcpt_attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.messages if address in r.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(
            f"expected {count} messages at the SMTP server, got {len(self.messages)}"
        )


class _Handler:
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        with self.sink.lock:
            self.sink.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        with self.sink.lock:
            self.sink.rcpt_attempts[address] = self.sink.rcpt_attempts.get(address, 0) + 1
        if self.sink.refuse_rcpt is not None:
            reply = self.sink.refuse_rcpt(address)
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        sink = self.sink
        with sink.lock:
            sink.data_count += 1
            number = sink.data_count
        if number in sink.drop_at:
            server.transport.close()
            return "421 4.4.2 connection dropped"
        if number == sink.hold_at:
            sink.holding.set()
            while not sink.release.is_set():
                await asyncio.sleep(0.05)
            return "451 4.3.0 aborted"
        if sink.fail_data is not None:
            reply = sink.fail_data(number)
            if reply:
                return reply
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.sink.lock:
            self.sink.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message)  # type: ignore[arg-type]
            )
        return "250 Message accepted"


@pytest.fixture
def smtp_server() -> Iterator[SMTPSink]:
    """A real SMTP server (aiosmtpd) on a free loopback port, collecting what it receives."""
    from aiosmtpd.controller import Controller

    sink = SMTPSink(host="127.0.0.1", port=free_port())
    controller = Controller(_Handler(sink), hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        sink.release.set()
        controller.stop()


# --- Redis and Celery ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis at {REDIS_URL} ({exc})")
    return REDIS_URL


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    log_file: Any = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None and not self.log_file.closed:
            self.log_file.close()


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    for name, value in settings.model_dump().items():
        if value is None:  # unset (DIGEST_SENTRY_DSN, DIGEST_METRICS_TOKEN): not "None"
            continue
        # Lists are comma-separated in the environment, as Settings reads them.
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        env[f"DIGEST_{name.upper()}"] = text
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a crash in a worker process leaves its traceback
    return env


def start_worker(
    settings: Settings,
    log_path: Path,
    *,
    name: str = "w1",
    concurrency: int = 1,
    pool: str = "solo",
    extra_env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> WorkerProcess:
    """A real `celery -A workers worker` process; returns once it is ready for tasks. `wrap`
    goes before the command (e.g. a mount namespace the worker runs in)."""
    env = {**worker_env(settings), **(extra_env or {})}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            *(wrap or []),
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--loglevel=INFO",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "-Q",
            settings.task_queue,
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(process, log_path, env, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            worker.stop()
            raise AssertionError(f"worker exited early:\n{worker.log()}")
        if "ready." in worker.log():
            return worker
        time.sleep(0.1)
    worker.stop()
    raise AssertionError(f"worker not ready within 60 s:\n{worker.log()}")


@pytest.fixture
def faulty_smtp() -> Iterator[Any]:
    """An SMTP server that drops connections at chosen steps or answers slowly
    (tests/smtp_faults.py), on a free loopback port."""
    from tests.smtp_faults import FaultySMTP

    server = FaultySMTP(host="127.0.0.1", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[..., None]]]:
    """A Redis server of this test's own, so that restarting it disturbs nobody else."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server binary")
    port = free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]

    def start():
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while not _ping(client):
            if time.monotonic() > deadline:
                raise AssertionError("redis did not start")
            time.sleep(0.05)
        client.close()
        return proc

    state = {"proc": start()}

    def restart(down_for: float = 1.0) -> None:
        state["proc"].terminate()
        state["proc"].wait(10)
        time.sleep(down_for)
        state["proc"] = start()

    yield f"redis://127.0.0.1:{port}/0", restart
    state["proc"].terminate()
    state["proc"].wait(10)


def _ping(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def celery_settings(tmp_path: Path, redis_url: str, smtp_server: SMTPSink) -> Settings:
    """Settings for tests with real workers: a file SQLite store, a private queue, real SMTP."""
    return make_settings(
        tmp_path,
        redis_url=redis_url,
        task_queue=f"digest-test-{uuid.uuid4().hex[:8]}",
        mailer="smtp",
        smtp_url=smtp_server.url,
    )


@pytest.fixture
def celery_client(celery_settings: Settings) -> Iterator[Any]:
    """A Celery app configured like the workers, to send tasks and wait for results."""
    from workers.app import make_celery

    app = make_celery(celery_settings)
    yield app
    app.close()


# --- the fast lane ---------------------------------------------------------------------------

# A test that starts a process, a server or a browser, or talks to Redis or PostgreSQL, is an
# integration test: `pytest -m "not integration"` is the fast lane. Marked here from what the
# test uses, so that a new test on these fixtures cannot forget its mark.
INTEGRATION_FIXTURES = {
    "smtp_server",
    "redis_url",
    "celery_settings",
    "celery_client",
    "postgres_url",
    "browser",
    "live",
    "private_redis",
    "faulty_smtp",
}
# Modules whose every test runs the `digest` command or another process.
INTEGRATION_MODULES = {
    "test_cli",
    "test_quality",
    "test_rank_cli",
    "test_browser",
    "test_ingest_processes",
    "test_exactly_once",
    "test_fault_recovery",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("db_url") == "postgresql"
        uses = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if on_postgres or uses & INTEGRATION_FIXTURES or module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
