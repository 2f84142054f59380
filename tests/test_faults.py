"""Faults survived with real processes: a killed worker, a flaky or dropping SMTP server,
refused addresses, a Redis restart, and two planners at once."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter

import pytest
from sqlalchemy import insert
from sqlmodel import Session, select

from digest import delivery, paperstore
from digest.db import create_schema, make_engine
from digest.models import Delivery, DeliveryState, Subscriber, SubscriberStatus
from tests.conftest import SMTPSink, make_settings, start_worker
from tests.factories import make_paper

pytestmark = pytest.mark.integration


def populate(settings, n: int, now: dt.datetime, *, hour: int | None = None):
    """A store with a few papers and `n` active subscribers due now."""
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=now,
            papers=[
                make_paper(
                    title=f"Diffusion models trick {i}",
                    abstract=f"Diffusion models improved by trick {i}.",
                    published=now - dt.timedelta(hours=3),
                )
                for i in range(12)
            ],
        )
        session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"s{i:05d}@example.com",
                    "status": SubscriberStatus.ACTIVE.value,
                    "topics": ["diffusion models"],
                    "exclude": [],
                    "frequency": "daily",
                    "weekly_day": 0,
                    "send_hour": now.hour if hour is None else hour,
                    "timezone": "UTC",
                    "bounce_count": 0,
                    "created_at": now,
                }
                for i in range(n)
            ],
        )
        session.commit()
    return engine


def plan(engine, settings, now):
    with Session(engine) as session:
        return delivery.plan_deliveries(
            session=session, settings=settings, now=now, digest_date=now.date()
        )


def wait_until(predicate, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def received_counts(smtp_server: SMTPSink) -> Counter[str]:
    return Counter(r for m in smtp_server.messages for r in m.rcpt_tos)


def states(engine) -> Counter[str]:
    with Session(engine) as session:
        return Counter(d.state for d in session.exec(select(Delivery)))


@pytest.fixture
def fault_settings(tmp_path, redis_url, smtp_server):
    import uuid

    return make_settings(
        tmp_path,
        redis_url=redis_url,
        task_queue=f"digest-faults-{uuid.uuid4().hex[:8]}",
        mailer="smtp",
        smtp_url=smtp_server.url,
        lease_seconds=3,
        smtp_timeout=2.5,
        planned_grace_seconds=0,
        smtp_retry_base_seconds=0.01,
        send_batch_size=2000,
    )


@pytest.fixture
def fault_client(fault_settings):
    from workers.app import make_celery

    app = make_celery(fault_settings)
    yield app
    app.close()


def test_worker_killed_mid_batch_every_subscriber_gets_exactly_one_digest(
    tmp_path, fault_settings, fault_client, smtp_server
):
    now = dt.datetime.now(dt.UTC)
    engine = populate(fault_settings, 2000, now)
    ids = plan(engine, fault_settings, now).delivery_ids
    assert len(ids) == 2000
    # The server stalls on the 700th message, so the kill lands while a message is in flight.
    smtp_server.hold_at = 700
    first = start_worker(fault_settings, tmp_path / "w1.log", name="doomed")
    try:
        fault_client.send_task("workers.tasks.send_batch", args=[ids])
        assert smtp_server.holding.wait(120), first.log()
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()
    smtp_server.release.set()
    assert len(smtp_server.messages) == 699
    assert states(engine)[DeliveryState.SENDING] == 1301  # claimed by the dead worker

    second = start_worker(fault_settings, tmp_path / "w2.log", name="rescuer")
    try:
        time.sleep(fault_settings.lease_seconds + 0.5)  # the dead worker's lease runs out
        swept = fault_client.send_task("workers.tasks.sweep").get(timeout=60)
        assert swept["queued"] == 1301
        wait_until(
            lambda: len(smtp_server.messages) >= 2000,
            180,
            "2000 digests",
        )
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        second.stop()
    counts = received_counts(smtp_server)
    assert len(counts) == 2000 and set(counts.values()) == {1}
    assert states(engine) == Counter({DeliveryState.SENT: 2000})


def test_flaky_and_dropping_smtp_server_all_digests_arrive_none_twice(
    tmp_path, fault_settings, fault_client, smtp_server
):
    # One message in five gets 421 (closing) or 451 (try later): retried, they arrive once.
    # Two connections are dropped after the whole message went out, before the answer: the
    # sender cannot know whether they arrived, so they are unconfirmed and not sent again.
    smtp_server.fail_data = lambda n: (
        ("421 4.3.2 busy, closing" if n % 10 == 0 else "451 4.3.0 try later")
        if n % 5 == 0
        else None
    )
    smtp_server.drop_at = {33, 77}
    now = dt.datetime.now(dt.UTC)
    engine = populate(fault_settings, 200, now)
    ids = plan(engine, fault_settings, now).delivery_ids
    worker = start_worker(fault_settings, tmp_path / "w.log")
    try:
        summary = fault_client.send_task("workers.tasks.send_batch", args=[ids]).get(timeout=120)
    finally:
        worker.stop()
    assert summary["sent"] == 198 and summary["failed"] == 0, summary
    assert summary["unconfirmed"] == 2, summary
    counts = received_counts(smtp_server)
    # (this server really did drop those two: they are the ones missing)
    assert len(counts) == 198 and set(counts.values()) == {1}
    assert states(engine) == Counter({DeliveryState.SENT: 198, DeliveryState.UNCONFIRMED: 2})
    assert smtp_server.data_count > 240  # the faults really happened and were retried
    assert smtp_server.connections >= 1 + 2 + 200 // 10 - 1


def test_refused_addresses_fail_without_retry_and_are_suppressed_the_rest_arrive(
    tmp_path, redis_url, smtp_server
):
    settings = make_settings(
        tmp_path,
        mailer="smtp",
        smtp_url=smtp_server.url,
        suppress_after_failures=2,
        smtp_retry_base_seconds=0.01,
    )
    smtp_server.refuse_rcpt = lambda a: (
        "550 5.1.1 mailbox unknown" if a.startswith("s0000") else None
    )  # s00000 .. s00009 do not exist
    now = dt.datetime(2026, 6, 12, 9, tzinfo=dt.UTC)
    engine = populate(settings, 50, now, hour=7)
    from digest.mailer import mailer_for

    mailer = mailer_for(settings)
    for day in range(3):
        moment = now + dt.timedelta(days=day)
        with Session(engine) as session:
            paperstore.upsert_papers(
                session=session,
                now=moment,
                papers=[
                    make_paper(
                        title=f"Diffusion models day {day} {i}",
                        abstract=f"Diffusion models day {day} variant {i}.",
                        published=moment,
                    )
                    for i in range(3)
                ],
            )
            summary = delivery.send_due_digests(
                session=session, mailer=mailer, settings=settings, now=moment
            )
        if day < 2:
            assert len(summary.sent) == 40 and len(summary.failed) == 10
            assert all("550" in reason for _, reason in summary.failed)
        else:
            assert len(summary.sent) == 40 and summary.failed == []
            assert dict(summary.skipped)["s00001@example.com"] == (
                "suppressed after repeated permanent delivery failures"
            )
    # Never retried: one RCPT per refused address per day, and nothing after suppression.
    assert {a: n for a, n in smtp_server.rcpt_attempts.items() if a.startswith("s0000")} == {
        f"s{i:05d}@example.com": 2 for i in range(10)
    }
    counts = received_counts(smtp_server)
    assert len(counts) == 40 and set(counts.values()) == {3}
    with Session(engine) as session:
        suppressed = session.exec(
            select(Subscriber).where(Subscriber.status == SubscriberStatus.SUPPRESSED)
        ).all()
        assert sorted(s.email for s in suppressed) == [f"s{i:05d}@example.com" for i in range(10)]
        failed = session.exec(select(Delivery).where(Delivery.state == DeliveryState.FAILED)).all()
        assert len(failed) == 20 and all(d.retry_at is None for d in failed)


def test_redis_restarted_during_a_run_the_run_completes(tmp_path, private_redis, smtp_server):
    url, restart = private_redis
    settings = make_settings(
        tmp_path,
        redis_url=url,
        task_queue="digest-restart",
        mailer="smtp",
        smtp_url=smtp_server.url,
        lease_seconds=3,
        smtp_timeout=2.5,
        planned_grace_seconds=0,
        send_batch_size=50,
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 1000, now)
    from workers.app import make_celery

    client = make_celery(settings)
    worker = start_worker(settings, tmp_path / "w.log")
    try:
        planned = client.send_task("workers.tasks.plan_due").get(timeout=60)
        assert planned["queued"] == 1000
        wait_until(lambda: len(smtp_server.messages) >= 100, 120, "the first digests")
        restart()  # everything queued in Redis is gone; the store still knows what is due
        assert len(smtp_server.messages) < 1000

        # Beat runs the sweeper every few minutes; here we run it as soon as Redis is back.
        def swept() -> bool:
            try:
                client.send_task("workers.tasks.sweep").get(timeout=30)
                return True
            except Exception:  # noqa: BLE001 - the connection is being re-established
                return False

        wait_until(swept, 60, "the sweeper to run after the restart", step=1)
        wait_until(lambda: len(smtp_server.messages) >= 1000, 180, "all 1000 digests")
        time.sleep(0.5)
    finally:
        worker.stop()
        client.close()
    counts = received_counts(smtp_server)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert states(engine) == Counter({DeliveryState.SENT: 1000})


def test_two_planners_at_once_never_give_anyone_two_digests(
    tmp_path, fault_settings, fault_client, smtp_server
):
    now = dt.datetime.now(dt.UTC)
    populate(fault_settings, 600, now)
    settings = fault_settings.model_copy(update={"send_batch_size": 100})
    from tests.conftest import worker_env

    assert worker_env(settings)["DIGEST_TASK_QUEUE"] == fault_settings.task_queue
    workers = [start_worker(settings, tmp_path / f"w{i}.log", name=f"w{i}") for i in (1, 2)]
    try:
        results = [fault_client.send_task("workers.tasks.plan_due") for _ in range(2)]
        queued = [r.get(timeout=60)["queued"] for r in results]
        assert sum(queued) == 600  # each row planned once, by one of the two
        wait_until(lambda: len(smtp_server.messages) >= 600, 180, "600 digests")
        time.sleep(1.0)
    finally:
        for w in workers:
            w.stop()
    counts = received_counts(smtp_server)
    assert len(counts) == 600 and set(counts.values()) == {1}


def test_a_digest_that_keeps_failing_comes_back_later_and_arrives_once(
    tmp_path, fault_settings, fault_client, smtp_server
):
    # The first three tries of the first message fail (all of its in-task attempts): it is
    # marked failed with a retry time, and the worker sends it again when that time comes.
    smtp_server.fail_data = lambda n: "451 4.3.0 try later" if n <= 3 else None
    settings = fault_settings.model_copy(update={"retry_base_seconds": 1.0})
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 5, now)
    ids = plan(engine, settings, now).delivery_ids
    worker = start_worker(settings, tmp_path / "w.log")
    try:
        summary = fault_client.send_task("workers.tasks.send_batch", args=[ids]).get(timeout=60)
        assert summary["sent"] == 4 and summary["retrying"] == 1, summary
        wait_until(lambda: len(smtp_server.messages) >= 5, 60, "the retried digest")
        wait_until(lambda: states(engine) == Counter({DeliveryState.SENT: 5}), 30, "sent")
        time.sleep(0.5)
    finally:
        worker.stop()
    counts = received_counts(smtp_server)
    assert len(counts) == 5 and set(counts.values()) == {1}
    with Session(engine) as session:
        attempts = sorted(d.attempts for d in session.exec(select(Delivery)))
    assert attempts == [1, 1, 1, 1, 2]
