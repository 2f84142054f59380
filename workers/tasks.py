"""Thin tasks: ids and ISO dates in, one service call each."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Engine

from digest import services
from digest.config import get_settings
from digest.db import create_schema, make_engine, session_scope
from digest.mailer import Mailer, make_mailer
from workers.app import app


@lru_cache(maxsize=1)
def _engine() -> Engine:
    engine = make_engine(get_settings().database_url)
    create_schema(engine)
    return engine


def _mailer() -> Mailer:
    s = get_settings()
    return make_mailer(
        s.mailer, outbox_dir=s.outbox_dir, smtp_url=s.smtp_url, smtp_timeout=s.smtp_timeout
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@app.task(name="workers.tasks.ingest", bind=True)
def ingest(self: Any, source: str | None = None, day: str | None = None) -> dict[str, Any]:
    """Ingest one source (or every configured one); the run is recorded either way.

    A source that failed entirely (down, rate-limited) is tried again a little later, so a
    short outage at ingest time does not leave the morning's digests without its papers.
    """
    settings = get_settings()
    with session_scope(_engine()) as session:
        result = services.ingest(
            session=session,
            settings=settings,
            now=_now(),
            source=source,
            day=dt.date.fromisoformat(day) if day else None,
        )
    failed = [run for run in result["runs"] if run["status"] == "failed"]
    if source and failed and self.request.retries < settings.ingest_retries:
        raise self.retry(countdown=settings.ingest_retry_seconds)
    return result


@app.task(name="workers.tasks.plan_due")
def plan_due() -> dict[str, Any]:
    """Find the subscribers whose digest is due now and queue them in batches of ids."""
    settings = get_settings()
    with session_scope(_engine()) as session:
        due, summary = services.due_subscribers(session=session, now=_now())
    queued = 0
    for day, ids in sorted(due.items()):
        for start in range(0, len(ids), settings.send_batch_size):
            batch = ids[start : start + settings.send_batch_size]
            send_batch.delay(batch, day.isoformat())
            queued += len(batch)
    return {"queued": queued, "not_due": len(summary.skipped)}


@app.task(name="workers.tasks.send_batch")
def send_batch(subscriber_ids: list[int], digest_date: str) -> dict[str, object]:
    with session_scope(_engine()) as session:
        summary = services.send_digests(
            session=session,
            mailer=_mailer(),
            settings=get_settings(),
            subscriber_ids=subscriber_ids,
            digest_date=dt.date.fromisoformat(digest_date),
            now=_now(),
        )
    return summary.as_dict()


@app.task(name="workers.tasks.send_due")
def send_due(digest_date: str | None = None, email: str | None = None) -> dict[str, object]:
    """What `digest send` does, run by a worker."""
    with session_scope(_engine()) as session:
        summary = services.send_due_digests(
            session=session,
            mailer=_mailer(),
            settings=get_settings(),
            now=_now(),
            digest_date=dt.date.fromisoformat(digest_date) if digest_date else None,
            email=email,
        )
    return summary.as_dict()
