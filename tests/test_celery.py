"""Real Celery worker processes on the real Redis, delivering to a real SMTP server."""

import datetime as dt

import pytest
from sqlmodel import Session, select

from digest.db import create_schema, make_engine
from digest.models import Delivery, DeliveryState, SubscriberStatus
from digest.runs import last_runs
from tests.conftest import start_worker
from tests.factories import make_paper, make_subscriber, store_papers

pytestmark = pytest.mark.integration


def seed_store(settings, now):
    """The workers' own file store, with papers of this morning and two subscribers: one
    confirmed, one not (the workers read the real clock, so these are stored as of `now`)."""
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        store_papers(
            session,
            [
                make_paper(
                    title=f"Diffusion models trick {i}",
                    abstract=f"Diffusion models {i}.",
                    published=now - dt.timedelta(hours=5),
                )
                for i in range(3)
            ],
            now=now,
        )
        make_subscriber(session, email="ada@example.com", now=now)
        make_subscriber(session, email="gone@example.com", now=now, status=SubscriberStatus.PENDING)
    return engine


def test_worker_process_runs_the_send_task_and_the_digest_arrives(
    tmp_path, celery_settings, celery_client, smtp_server
):
    now = dt.datetime.now(dt.UTC)
    engine = seed_store(celery_settings, now)
    worker = start_worker(celery_settings, tmp_path / "worker.log")
    try:
        today = now.date().isoformat()
        result = celery_client.send_task("workers.tasks.send_due", kwargs={"digest_date": today})
        summary = result.get(timeout=60)
        assert summary["sent"] == 1 and summary["skipped_by_reason"] == {"not confirmed yet": 1}
        smtp_server.wait_for(1)
        (message,) = smtp_server.to("ada@example.com")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "Diffusion models trick" in message.get_body(("plain",)).get_content()

        # The same task again (a retry, a second beat) sends nothing twice.
        again = celery_client.send_task(
            "workers.tasks.send_due", kwargs={"digest_date": today}
        ).get(timeout=60)
        assert again["sent"] == 0
        assert len(smtp_server.messages) == 1
    finally:
        worker.stop()
    with Session(engine) as session:
        (delivery,) = session.exec(select(Delivery)).all()
    assert delivery.state == DeliveryState.SENT


def test_planner_task_queues_batches_that_a_worker_sends(
    tmp_path, celery_settings, celery_client, smtp_server
):
    now = dt.datetime.now(dt.UTC)
    engine = seed_store(celery_settings, now)
    with Session(engine) as session:
        # Their send hour is this hour, so the planner finds them due now.
        for email in ["ada@example.com"] + [f"r{i}@example.com" for i in range(4)]:
            make_subscriber(session, email=email, now=now, send_hour=now.hour)
    worker = start_worker(celery_settings, tmp_path / "worker.log")
    try:
        planned = celery_client.send_task("workers.tasks.plan_due").get(timeout=60)
        assert planned["queued"] == 5
        with Session(engine) as session:
            (run,) = last_runs(session=session, limit=1)
        assert (run.kind, run.summary["planned"]) == ("plan", 5)
        smtp_server.wait_for(5)
    finally:
        worker.stop()
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(
        ["ada@example.com"] + [f"r{i}@example.com" for i in range(4)]
    )
