"""Exactly once when the world misbehaves (issue 15), with real processes: connections that
drop after the whole message was handed over (unconfirmed, never resent blindly), batches
that outlive their lease (fenced claims), and the settings that cannot work together."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter

import pytest
from sqlmodel import Session, select

from digest import delivery
from digest.delivery.store import delivery_store
from digest.mailer import mailer_for
from digest.models import Delivery, DeliveryState
from tests.conftest import make_settings, start_worker
from tests.test_faults import plan, populate, states

pytestmark = pytest.mark.integration


def every(n: int, fault: str):
    return lambda number: fault if number % n == 0 else None


def only(numbers: set[int], fault: str):
    return lambda number: fault if number in numbers else None


@pytest.mark.parametrize(
    ("pipelining", "chunking", "step"),
    [
        (True, True, "BDAT LAST"),
        (True, False, "the final dot"),
        (False, False, "the final dot"),
    ],
    ids=["after-bdat-last", "after-the-dot-pipelined", "after-the-dot-plain"],
)
def test_a_drop_after_the_whole_message_is_unconfirmed_and_not_sent_again(
    tmp_path, faulty_smtp, pipelining, chunking, step
):
    faulty_smtp.pipelining, faulty_smtp.chunking = pipelining, chunking
    faulty_smtp.fault = only({5, 12}, "drop-after-end")
    settings = make_settings(
        tmp_path, mailer="smtp", smtp_url=faulty_smtp.url, smtp_retry_base_seconds=0.01
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 20, now)
    with Session(engine) as session:
        summary = delivery.send_due_digests(
            session=session, mailer=mailer_for(settings), settings=settings, now=now
        )
    # The server took all 20 (two of them without answering): each exactly once.
    counts = faulty_smtp.counts()
    assert len(counts) == 20 and set(counts.values()) == {1}
    assert faulty_smtp.drops == Counter({"after the end of data": 2})
    assert len(summary.sent) == 18 and len(summary.unconfirmed) == 2
    assert all(step in reason for _, reason in summary.unconfirmed), summary.unconfirmed
    assert states(engine) == Counter({DeliveryState.SENT: 18, DeliveryState.UNCONFIRMED: 2})
    # `digest why` names it; the next send leaves it alone.
    address = summary.unconfirmed[0][0]
    with Session(engine) as session:
        lines = delivery.why(
            session=session, settings=settings, email=address, now=now, digest_date=now.date()
        )
        (line,) = [x for x in lines if x.startswith(now.date().isoformat())]
        assert "unconfirmed" in line and "digest deliveries release" in line, line
        again = delivery.send_due_digests(
            session=session,
            mailer=mailer_for(settings),
            settings=settings,
            now=now,
            digest_date=now.date(),
        )
    assert again.sent == [] and faulty_smtp.counts() == counts


def test_a_drop_before_the_data_is_retried_and_arrives_once(tmp_path, faulty_smtp):
    faulty_smtp.chunking = False
    faulty_smtp.fault = only({3, 9}, "drop-at-data")
    settings = make_settings(
        tmp_path, mailer="smtp", smtp_url=faulty_smtp.url, smtp_retry_base_seconds=0.01
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 12, now)
    with Session(engine) as session:
        summary = delivery.send_due_digests(
            session=session, mailer=mailer_for(settings), settings=settings, now=now
        )
    counts = faulty_smtp.counts()
    assert len(counts) == 12 and set(counts.values()) == {1}
    assert faulty_smtp.drops == Counter({"at DATA": 2})
    assert len(summary.sent) == 12 and summary.unconfirmed == []
    assert states(engine) == Counter({DeliveryState.SENT: 12})


def test_an_operator_releases_an_unconfirmed_delivery_and_it_is_sent_again(tmp_path, faulty_smtp):
    from click.testing import CliRunner

    from digest.cli import main
    from tests.conftest import worker_env

    faulty_smtp.fault = only({2}, "drop-after-end")
    settings = make_settings(
        tmp_path, mailer="smtp", smtp_url=faulty_smtp.url, smtp_retry_base_seconds=0.01
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 3, now)
    env = worker_env(settings)
    runner = CliRunner()
    sent = runner.invoke(main, ["send"], env=env)
    assert sent.exit_code == 1 and "unconfirmed 1" in sent.output, sent.output
    listed = runner.invoke(main, ["deliveries", "list"], env=env)
    assert listed.exit_code == 0 and "unconfirmed" in listed.output, listed.output
    (delivery_id,) = [
        d.id for d in Session(engine).exec(select(Delivery)) if d.state == "unconfirmed"
    ]
    released = runner.invoke(main, ["deliveries", "release", str(delivery_id)], env=env)
    assert released.output.startswith("released 1 unconfirmed delivery"), released.output
    resent = runner.invoke(main, ["send", "--date", now.date().isoformat()], env=env)
    assert resent.exit_code == 0 and "sent 1," in resent.output, resent.output
    counts = faulty_smtp.counts()
    # The operator chose to send it again: it may arrive twice (here the server had it).
    assert sorted(counts.values()) == [1, 1, 2]
    assert states(engine) == Counter({DeliveryState.SENT: 3})


def test_a_sender_that_lost_its_rows_neither_marks_nor_sends_them(tmp_path, faulty_smtp):
    settings = make_settings(tmp_path, mailer="smtp", smtp_url=faulty_smtp.url)
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 4, now)
    ids = plan(engine, settings, now).delivery_ids
    store = delivery_store(engine)
    with Session(engine) as session:
        mine = store.claim(session, ids, now=now, settings=settings)
    # My lease runs out; another sender takes the rows over and sends them.
    later = now + dt.timedelta(seconds=settings.lease_seconds + 1)
    with Session(engine) as session:
        theirs = store.claim(session, ids, now=later, settings=settings)
    assert theirs.ids == ids and theirs.token != mine.token
    writer = store.writer(engine, mine)
    assert not writer.mark_sent(ids[0], later)
    assert not writer.set_state(ids[1], DeliveryState.FAILED, later, reason="x")
    writer.close()
    with Session(engine) as session:
        rows = list(session.exec(select(Delivery)))
    assert {(d.state, d.claim_token) for d in rows} == {("sending", theirs.token)}
    # My lease keeper learns it at its next renewal, and lets nothing more of them go out.
    from digest.delivery.lease import LeaseKeeper

    keeper = LeaseKeeper(
        engine=engine, claim=mine, settings=settings, clock=lambda: dt.datetime.now(dt.UTC)
    )
    keeper.until = now  # as if my lease were about to end: may_send renews first
    assert not keeper.may_send(ids[2])
    assert keeper.lost == set(ids) and keeper.owned == set()
    # The other sender's keeper renews its own rows and may send them.
    theirs_keeper = LeaseKeeper(
        engine=engine, claim=theirs, settings=settings, clock=lambda: dt.datetime.now(dt.UTC)
    )
    theirs_keeper.renew()
    assert theirs_keeper.owned == set(ids) and theirs_keeper.may_send(ids[2])


def test_settings_whose_lease_cannot_cover_one_message_are_refused(tmp_path):
    from pydantic import ValidationError

    from digest.config import describe_settings_error

    with pytest.raises(ValidationError) as caught:
        make_settings(
            tmp_path,
            mailer="smtp",
            lease_seconds=30,
            smtp_timeout=20,
            smtp_rate_per_second=0.05,
        )
    line = describe_settings_error(caught.value)
    assert "DIGEST_LEASE_SECONDS=30 is too short" in line and "40" in line, line
    assert "\n" not in line
    make_settings(tmp_path, mailer="smtp", lease_seconds=45, smtp_timeout=30)  # the defaults


# --- real processes: a worker, Redis, an SMTP server with faults ----------------------------


def worker_settings(tmp_path, redis_url, smtp, **overrides):
    values = {
        "redis_url": redis_url,
        "task_queue": f"digest-once-{uuid.uuid4().hex[:8]}",
        "mailer": "smtp",
        "smtp_url": smtp.url,
        "smtp_retry_base_seconds": 0.01,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


def test_one_drop_in_fifty_after_the_data_3000_messages_no_duplicates(
    tmp_path, redis_url, faulty_smtp
):
    faulty_smtp.fault = every(50, "drop-after-end")
    settings = worker_settings(tmp_path, redis_url, faulty_smtp, send_batch_size=500)
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 3000, now)
    from workers.app import make_celery

    client = make_celery(settings)
    worker = start_worker(settings, tmp_path / "w.log", pool="prefork", concurrency=2)
    try:
        queued = client.send_task("workers.tasks.plan_due").get(timeout=120)["queued"]
        assert queued == 3000
        deadline = time.monotonic() + 420
        while sum(states(engine).get(s, 0) for s in ("sent", "unconfirmed")) < 3000:
            assert time.monotonic() < deadline, states(engine)
            # As beat would: a worker process that died mid-batch leaves rows for the sweeper.
            client.send_task("workers.tasks.sweep").get(timeout=60)
            time.sleep(5)
        time.sleep(1)
    finally:
        worker.stop()
        client.close()
    counts = faulty_smtp.counts()
    assert len(counts) == 3000 and set(counts.values()) == {1}, Counter(counts.values())
    dropped = faulty_smtp.drops["after the end of data"]
    assert dropped == 60
    assert states(engine) == Counter({DeliveryState.SENT: 2940, DeliveryState.UNCONFIRMED: 60})


def sweep_now(settings, engine, client) -> None:
    """What the sweep task does (workers.tasks.sweep), from the test process."""
    from workers.queue import carried_delivery_ids

    carried = carried_delivery_ids(
        settings.redis_url, settings.task_queue, held_for=settings.lease_seconds
    )
    with Session(engine) as session:
        ids = delivery.stuck_deliveries(
            session=session, settings=settings, now=dt.datetime.now(dt.UTC), queued=carried
        )
    for batch in delivery.batches(ids, settings.send_batch_size):
        client.send_task("workers.tasks.send_batch", args=[batch])


def test_a_batch_that_outlives_its_lease_is_not_sent_twice(tmp_path, redis_url, faulty_smtp):
    # A relay that takes one message a second; batches of 100 take 100 s under a 30 s lease.
    # Two workers, and a sweeper running every 5 s that would hand expired rows to the other.
    faulty_smtp.delay = 1.0
    settings = worker_settings(
        tmp_path,
        redis_url,
        faulty_smtp,
        lease_seconds=30,
        smtp_timeout=10,
        send_batch_size=100,
        planned_grace_seconds=5,
    )
    now = dt.datetime.now(dt.UTC)
    engine = populate(settings, 200, now)
    from workers.app import make_celery

    client = make_celery(settings)
    workers = [start_worker(settings, tmp_path / f"w{i}.log", name=f"w{i}") for i in (1, 2)]
    try:
        assert client.send_task("workers.tasks.plan_due").get(timeout=60)["queued"] == 200
        deadline = time.monotonic() + 240
        while states(engine).get(DeliveryState.SENT, 0) < 200:
            assert time.monotonic() < deadline, states(engine)
            # The sweeper's own steps, run here: both workers are busy sending.
            sweep_now(settings, engine, client)
            time.sleep(5)
        time.sleep(2)
        logs = "".join(w.log() for w in workers)
    finally:
        for w in workers:
            w.stop()
        client.close()
    counts = faulty_smtp.counts()
    assert len(counts) == 200 and set(counts.values()) == {1}, Counter(counts.values())
    assert states(engine) == Counter({DeliveryState.SENT: 200})
    assert "lease_lost" not in logs and "sent_after_takeover" not in logs


def test_the_sweeper_sees_the_delivery_ids_queued_tasks_carry(tmp_path, redis_url):
    from workers.app import make_celery
    from workers.queue import carried_delivery_ids

    settings = make_settings(
        tmp_path, redis_url=redis_url, task_queue=f"digest-carried-{uuid.uuid4().hex[:8]}"
    )
    client = make_celery(settings)
    try:
        client.send_task("workers.tasks.send_batch", args=[[3, 5, 8]])
        client.send_task("workers.tasks.send_batch", args=[[13]], priority=6)
        client.send_task("workers.tasks.sweep")
        carried = carried_delivery_ids(redis_url, settings.task_queue, held_for=45)
        assert carried == {3, 5, 8, 13}
        # Another deployment's queue on the same Redis carries nothing of ours.
        assert carried_delivery_ids(redis_url, settings.task_queue + "-other", held_for=45) == set()
        # A worker takes the first task (unacknowledged until done): still carried while the
        # lease would run, not when it was taken longer ago than that.
        with client.connection_for_write() as connection:
            queue = connection.SimpleQueue(settings.task_queue, no_ack=False)
            taken = queue.get(timeout=10)
            assert taken.headers["task"] == "workers.tasks.send_batch"
            held_ids = set(taken.decode()[0][0])
            assert carried_delivery_ids(redis_url, settings.task_queue, held_for=45) == {
                3,
                5,
                8,
                13,
            }
            time.sleep(1.1)
            assert carried_delivery_ids(redis_url, settings.task_queue, held_for=1) == (
                {3, 5, 8, 13} - held_ids
            )
            taken.ack()
            queue.close()
    finally:
        import redis

        r = redis.Redis.from_url(redis_url)
        r.delete(settings.task_queue, *r.keys(settings.task_queue + "\x06\x16*"))
        client.close()
