"""Thin tasks: ids and ISO dates in, one service call each."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from sqlalchemy.engine import Engine

from digest import delivery
from digest.config import get_settings
from digest.db import make_engine, require_current_schema, session_scope
from digest.ingestion import ingest_sources
from digest.mailer import Mailer, mailer_for
from workers.app import app

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


@app.task(name="workers.tasks.plan_due")
def plan_due() -> dict[str, Any]:
    """Plan the digests that are due now and queue them in batches of delivery ids."""
    with session_scope(_engine()) as session:
        # Each page of planned deliveries is queued as soon as it is committed.
        now = _now()
        plan = delivery.plan_deliveries(
            session=session, settings=get_settings(), now=now, on_planned=_enqueue
        )
        if plan.delivery_ids:
            delivery.record_plan(session=session, plan=plan, now=now)
    return {"queued": len(plan.delivery_ids), "not_due": len(plan.skipped)}


@app.task(name="workers.tasks.send_batch")
def send_batch(delivery_ids: list[int]) -> dict[str, Any]:
    with session_scope(_engine()) as session:
        summary = delivery.send_deliveries(
            session=session,
            mailer=_mailer(),
            settings=get_settings(),
            delivery_ids=delivery_ids,
            now=_now(),
            cache=_corpus_cache,
            clock=_now,
        )
    # Temporary failures come back at their retry time, one task per moment.
    retries: dict[dt.datetime, list[int]] = {}
    for delivery_id, retry_at in summary.retry:
        retries.setdefault(retry_at, []).append(delivery_id)
    for retry_at, ids in retries.items():
        send_batch.apply_async(args=[ids], eta=retry_at)
    return summary.as_dict()


@app.task(name="workers.tasks.sweep")
def sweep() -> dict[str, Any]:
    """Queue again what a dead worker, a lost task or a lost retry left behind."""
    with session_scope(_engine()) as session:
        ids = delivery.stuck_deliveries(session=session, settings=get_settings(), now=_now())
    _enqueue(ids)
    return {"queued": len(ids)}


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
