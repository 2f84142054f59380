"""Thin tasks: ids and ISO dates in, one service call each. A database that went away (a
restart, a blip) makes a task try again shortly, with backoff, a few times; every send batch
records its outcome, and a task that failed for good is recorded too, for `digest status`."""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import Any

from celery.signals import task_failure
from sqlalchemy.engine import Engine

from digest import delivery
from digest.config import get_settings
from digest.db import is_transient, make_engine, require_current_schema, session_scope
from digest.ingestion import ingest_sources
from digest.mailer import Mailer, mailer_for
from workers.app import app
from workers.queue import carried_delivery_ids

# Tries of a task whose database went away, 1, 2, 4 ... 30 s apart: about two minutes.
DB_RETRIES = 8

log = logging.getLogger(__name__)

# One per worker process: the prepared candidate corpus is reused across batches, and shared
# with the other worker processes of the host through the cache directory.
_corpus_cache = delivery.CorpusCache(directory=get_settings().cache_dir)


@lru_cache(maxsize=1)
def _engine() -> Engine:
    engine = make_engine(get_settings().database_url)
    require_current_schema(engine)
    return engine


@lru_cache(maxsize=1)
def _mailer() -> Mailer:
    return mailer_for(get_settings(), pooled=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@task_failure.connect
def _record_failed_task(
    sender: Any = None, exception: BaseException | None = None, **_: Any
) -> None:
    """A task that failed for good shows in `digest status` (a retried one does not fail)."""
    name = getattr(sender, "name", "?")
    try:
        with session_scope(_engine()) as session:
            delivery.record_task_failure(session=session, task=name, error=exception, now=_now())
    except Exception:  # noqa: BLE001 - the store is away: the worker's log has it
        log.exception("task_failure_not_recorded task=%s", name)


def _enqueue(delivery_ids: list[int]) -> None:
    for batch in delivery.batches(delivery_ids, get_settings().send_batch_size):
        send_batch.delay(batch)


@app.task(name="workers.tasks.ingest", bind=True)
def ingest(self: Any, source: str | None = None, day: str | None = None) -> dict[str, Any]:
    """Ingest one source (or every configured one); the run is recorded either way.

    A source that failed entirely (down, rate-limited) is tried again a little later, so a
    short outage at ingest time does not leave the morning's digests without its papers.
    """
    settings = get_settings()
    with session_scope(_engine()) as session:
        runs = ingest_sources(
            session=session,
            settings=settings,
            clock=_now,
            sources=[source] if source else None,
            day=dt.date.fromisoformat(day) if day else None,
        )
        result = {"runs": [{"run": r.id, "status": r.status, **r.summary} for r in runs]}
    embed_new_papers.delay()
    failed = [run for run in result["runs"] if run["status"] == "failed"]
    if source and failed and self.request.retries < settings.ingest_retries:
        raise self.retry(countdown=settings.ingest_retry_seconds)
    return result


@app.task(name="workers.tasks.embed_new_papers")
def embed_new_papers() -> dict[str, Any]:
    """Encode the papers that have no embedding yet for the active encoder (queued after each
    ingest run; a run with nothing new costs one query)."""
    from digest.embedding_store import embed_missing_papers
    from digest.encoder import load_encoder

    settings = get_settings()
    encoder = load_encoder(kind=settings.encoder, threads=settings.encoder_threads)
    if encoder is None:
        return {"embedded": 0, "encoder": None}
    with session_scope(_engine()) as session:
        done = embed_missing_papers(
            session=session, encoder=encoder, batch_size=settings.embed_batch_size
        )
    return {"embedded": done, "encoder": encoder.model_key}


@app.task(name="workers.tasks.plan_due", bind=True)
def plan_due(self: Any) -> dict[str, Any]:
    """Plan the digests that are due now and queue them in batches of delivery ids."""
    try:
        with session_scope(_engine()) as session:
            # Each page of planned deliveries is queued as soon as it is committed.
            now = _now()
            plan = delivery.plan_deliveries(
                session=session, settings=get_settings(), now=now, on_planned=_enqueue
            )
            if plan.delivery_ids:
                delivery.record_plan(session=session, plan=plan, now=now)
    except Exception as exc:
        _retry_on_database_blip(self, exc)
        raise
    return {"queued": len(plan.delivery_ids), "not_due": len(plan.skipped)}


def _retry_on_database_blip(task: Any, exc: Exception) -> None:
    """Try the task again shortly when the database went away; otherwise let it fail."""
    if is_transient(exc) and task.request.retries < DB_RETRIES:
        raise task.retry(exc=exc, countdown=min(30, 2**task.request.retries))


@app.task(name="workers.tasks.send_batch", bind=True)
def send_batch(self: Any, delivery_ids: list[int]) -> dict[str, Any]:
    started = _now()
    try:
        with session_scope(_engine()) as session:
            summary = delivery.send_deliveries(
                session=session,
                mailer=_mailer(),
                settings=get_settings(),
                delivery_ids=delivery_ids,
                now=started,
                cache=_corpus_cache,
                clock=_now,
            )
            delivery.record_batch(
                session=session, summary=summary, started=started, finished=_now()
            )
    except Exception as exc:
        _retry_on_database_blip(self, exc)
        raise
    # Temporary failures come back at their retry time, one task per moment.
    retries: dict[dt.datetime, list[int]] = {}
    for delivery_id, retry_at in summary.retry:
        retries.setdefault(retry_at, []).append(delivery_id)
    for retry_at, ids in retries.items():
        send_batch.apply_async(args=[ids], eta=retry_at)
    return summary.as_dict()


@app.task(name="workers.tasks.sweep")
def sweep() -> dict[str, Any]:
    """Queue again what a dead worker, a lost task or a lost retry left behind: rows under an
    expired lease, and planned or due rows that no queued (or lately taken) task carries."""
    settings = get_settings()
    carried = carried_delivery_ids(
        settings.redis_url, settings.task_queue, held_for=settings.lease_seconds
    )
    with session_scope(_engine()) as session:
        ids = delivery.stuck_deliveries(
            session=session, settings=settings, now=_now(), queued=carried
        )
    _enqueue(ids)
    return {"queued": len(ids), "carried": len(carried)}


@app.task(name="workers.tasks.send_due")
def send_due(digest_date: str | None = None, email: str | None = None) -> dict[str, Any]:
    """What `digest send` does, run by a worker."""
    with session_scope(_engine()) as session:
        summary = delivery.send_due_digests(
            session=session,
            mailer=_mailer(),
            settings=get_settings(),
            now=_now(),
            digest_date=dt.date.fromisoformat(digest_date) if digest_date else None,
            email=email,
        )
    return summary.as_dict()
