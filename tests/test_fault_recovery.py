"""Recovery from faults of the parts around the workers (issue 15), with real processes and the
default delivery settings: PostgreSQL restarted mid-send (fast and immediate), Redis flushed
mid-run (beat's sweeper finds what no task carries), and an outbox that cannot be written."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from digest.db import make_engine
from digest.models import Delivery, DeliveryState, Run
from tests.conftest import (
    ROOT,
    free_port,
    make_settings,
    service_missing,
    start_worker,
    worker_env,
)
from tests.test_faults import populate, wait_until

pytestmark = pytest.mark.integration

# The recovery bound the README promises with the default settings.
RECOVERY_SECONDS = 120


def start_beat(settings, log_path: Path) -> subprocess.Popen[bytes]:
    """A real `celery -A workers beat`, with the schedule the settings make (the sweeper every
    minute by default)."""
    env = worker_env(settings)
    schedule = log_path.with_suffix(".schedule")
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "beat",
            "--loglevel=INFO",
            "-s",
            str(schedule),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()  # the child has its own copy
    wait_until(
        lambda: (
            process.poll() is not None or "beat: Starting" in log_path.read_text("utf-8", "replace")
        ),
        60,
        "beat to start",
    )
    assert process.poll() is None, log_path.read_text()
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def outcome_counts(engine) -> Counter[str]:
    """Deliveries by state; empty while the database is away."""
    try:
        with Session(engine) as session:
            return Counter(d.state for d in session.exec(select(Delivery)))
    except Exception:  # noqa: BLE001 - restarting
        return Counter()


# --- PostgreSQL restarted mid-send -----------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (initdb in a temporary folder), so that
    restarting or crashing it disturbs nobody else."""

    def __init__(self) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not versions:
            service_missing("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = versions[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="digest-pg-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def pg_ctl(self, *args: str) -> None:
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-w", *args)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on"
        )
        self.pg_ctl("-o", options, "-l", str(self.dir / "log"), "start")

    def restart(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "stop")
        self.start()

    def remove(self) -> None:
        try:
            self.pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_send_nothing_twice_nothing_missing_within_two_minutes(
    tmp_path, redis_url, private_postgres, faulty_smtp, mode
):
    faulty_smtp.delay = 0.01  # about 100 messages a second: the restart lands mid-send
    settings = make_settings(
        tmp_path,
        database_url=private_postgres.url,
        redis_url=redis_url,
        task_queue=f"digest-pg-{uuid.uuid4().hex[:8]}",
        mailer="smtp",
        smtp_url=faulty_smtp.url,
        send_batch_size=250,
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 2000, now)
    from workers.app import make_celery

    client = make_celery(settings)
    worker = start_worker(settings, tmp_path / "w.log")
    beat = start_beat(settings, tmp_path / "beat.log")
    try:
        assert client.send_task("workers.tasks.plan_due").get(timeout=120)["queued"] == 2000
        wait_until(lambda: len(faulty_smtp.taken) >= 400, 120, "the first 400 digests")
        private_postgres.restart(mode)
        restarted = time.monotonic()
        assert len(faulty_smtp.taken) < 2000
        wait_until(
            lambda: outcome_counts(engine).get(DeliveryState.SENT, 0) >= 2000,
            RECOVERY_SECONDS,
            f"every digest within {RECOVERY_SECONDS} s of the restart",
            step=1,
        )
        took = time.monotonic() - restarted
        time.sleep(2)  # anything extra would arrive now
        log = worker.log()
    finally:
        stop(beat)
        worker.stop()
        client.close()
    counts = faulty_smtp.counts()
    assert len(counts) == 2000 and set(counts.values()) == {1}, Counter(counts.values())
    assert outcome_counts(engine) == Counter({DeliveryState.SENT: 2000})
    assert took < RECOVERY_SECONDS
    # The restart was felt, and ridden out: outcome writes or tasks were tried again.
    assert "outcome_write_retry" in log or "Retry in" in log or "lease_renew_failed" in log, log[
        -3000:
    ]
    engine.dispose()


# --- Redis flushed mid-run -------------------------------------------------------------------


def test_redis_flushed_mid_run_every_digest_within_two_minutes_none_twice(
    tmp_path, private_redis, faulty_smtp
):
    url, _ = private_redis
    faulty_smtp.delay = 0.02
    # The default delivery settings (lease, grace, sweep every minute); small batches so that
    # many tasks wait in the queue when it is flushed.
    settings = make_settings(
        tmp_path,
        redis_url=url,
        task_queue="digest-flush",
        mailer="smtp",
        smtp_url=faulty_smtp.url,
        send_batch_size=50,
        ingest_sources=["seeds"],
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 1000, now)
    import redis

    from workers.app import make_celery

    client = make_celery(settings)
    worker = start_worker(settings, tmp_path / "w.log")
    beat = start_beat(settings, tmp_path / "beat.log")
    try:
        assert client.send_task("workers.tasks.plan_due").get(timeout=120)["queued"] == 1000
        wait_until(lambda: len(faulty_smtp.taken) >= 100, 120, "the first 100 digests")
        redis.Redis.from_url(url).flushall()  # every queued task is gone
        flushed = time.monotonic()
        assert len(faulty_smtp.taken) < 1000
        wait_until(
            lambda: outcome_counts(engine).get(DeliveryState.SENT, 0) >= 1000,
            RECOVERY_SECONDS,
            f"every digest within {RECOVERY_SECONDS} s of the flush",
            step=1,
        )
        took = time.monotonic() - flushed
        time.sleep(2)
    finally:
        stop(beat)
        worker.stop()
        client.close()
    counts = faulty_smtp.counts()
    assert len(counts) == 1000 and set(counts.values()) == {1}, Counter(counts.values())
    assert took < RECOVERY_SECONDS


# --- the outbox cannot be written ------------------------------------------------------------


def namespace_with(outbox: Path, mount_options: str, then: str = "") -> list[str]:
    """A private mount namespace in which `outbox` is a fresh tmpfs (read-only, or tiny), for
    the command that follows; `then` runs after it, inside (e.g. copies out what was written)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        service_missing("unshare and root (mount namespaces)")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {tempfile.gettempdir()}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        service_missing(f"mount namespaces ({probe.stderr.decode().strip()})")
    outbox.mkdir(parents=True, exist_ok=True)
    run = f'"$@"; rc=$?; {then} exit $rc' if then else 'exec "$@"'
    script = f'mount -t tmpfs -o {mount_options} tmpfs "{outbox}" && {run}'
    return ["unshare", "-m", "sh", "-c", script, "sh"]


def eml_files(outbox: Path) -> list[Path]:
    return sorted(outbox.glob("*.eml"))


def recipients(outbox: Path) -> Counter[str]:
    from email import message_from_bytes

    return Counter(str(message_from_bytes(p.read_bytes())["To"]) for p in eml_files(outbox))


@pytest.mark.parametrize(
    "mount_options", ["ro,size=1m", "size=48k"], ids=["read-only", "disk-full"]
)
def test_an_outbox_that_cannot_be_written_fails_like_a_mailer_and_the_rerun_sends_the_rest(
    tmp_path, mount_options
):
    settings = make_settings(tmp_path, mailer="file")
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 30, now)
    outbox = settings.outbox_dir
    saved = tmp_path / "written-while-full"
    saved.mkdir()
    env = worker_env(settings)
    command = [sys.executable, "-m", "digest.cli", "send"]
    first = subprocess.run(
        namespace_with(outbox, mount_options, then=f'cp -a "{outbox}/." "{saved}/";') + command,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    written = eml_files(saved)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    reason = "read-only file system" if mount_options.startswith("ro") else "disk full"
    if reason == "disk full":
        assert 0 < len(written) < 30  # it filled up part-way
    assert f"failed {30 - len(written)}" in first.stdout, first.stdout
    assert reason in first.stdout, first.stdout
    assert not list(saved.glob("*.tmp")) and not list(saved.glob(".*.tmp"))
    with Session(engine) as session:
        rows = list(session.exec(select(Delivery)))
        run = session.exec(select(Run).where(Run.kind == "send")).one()
    assert Counter(d.state for d in rows) == Counter(
        {DeliveryState.SENT: len(written), DeliveryState.FAILED: 30 - len(written)}
    )
    assert all(reason in d.reason for d in rows if d.state == DeliveryState.FAILED)
    assert run.summary["sent"] == len(written)  # what really was written
    # The disk is writable again (what was written is still there): the re-run sends the rest.
    for path in written:
        shutil.copy2(path, outbox / path.name)
    second = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"sent {30 - len(written)}," in second.stdout, second.stdout
    counts = recipients(outbox)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert not [p for p in outbox.iterdir() if p.suffix != ".eml"]


def test_a_worker_with_a_read_only_outbox_fails_the_rows_and_a_healthy_one_sends_them(
    tmp_path, redis_url
):
    settings = make_settings(
        tmp_path,
        mailer="file",
        redis_url=redis_url,
        task_queue=f"digest-ro-{uuid.uuid4().hex[:8]}",
        retry_base_seconds=1.0,
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 20, now)
    from workers.app import make_celery

    client = make_celery(settings)
    outbox = settings.outbox_dir
    broken = start_worker(settings, tmp_path / "w1.log", wrap=namespace_with(outbox, "ro,size=1m"))
    try:
        assert client.send_task("workers.tasks.plan_due").get(timeout=60)["queued"] == 20
        wait_until(
            lambda: outcome_counts(engine).get(DeliveryState.FAILED, 0) == 20, 60, "20 failures"
        )
    finally:
        broken.stop()
    with Session(engine) as session:
        rows = list(session.exec(select(Delivery)))
        batch = session.exec(select(Run).where(Run.kind == "batch")).first()
    assert all("read-only file system" in d.reason and d.retry_at for d in rows)
    assert batch is not None and batch.summary["failed"] == 20
    healthy = start_worker(settings, tmp_path / "w2.log")
    try:
        wait_until(
            lambda: (
                client.send_task("workers.tasks.sweep").get(timeout=30) is not None
                and outcome_counts(engine).get(DeliveryState.SENT, 0) == 20
            ),
            90,
            "20 digests written",
            step=2,
        )
    finally:
        healthy.stop()
        client.close()
    counts = recipients(outbox)
    assert len(counts) == 20 and set(counts.values()) == {1}
    with make_engine(settings.database_url).connect() as db:
        assert db.execute(text("SELECT count(*) FROM delivery WHERE state='sending'")).scalar() == 0
