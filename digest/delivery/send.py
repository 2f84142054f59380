"""Sending: claim -> compose -> record -> transmit, for a batch of planned deliveries (a worker's
task), and the synchronous path of `digest send` (plan, then send in batches in this process).

Exactly once: a sender owns the rows it claimed (under a lease), records what each digest
contains before sending it, and marks each one sent right after the server accepted it; rows
that are sent, skipped or being sent by a live worker are never claimed again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import is_transient
from digest.delivery.compose import Composed, Skip, compose, load_claimed, still_wanted
from digest.delivery.context import Progress, SendContext
from digest.delivery.corpus_cache import CorpusCache
from digest.delivery.lease import LeaseKeeper
from digest.delivery.outcomes import Claim
from digest.delivery.planner import plan_deliveries
from digest.delivery.report import (
    SendSummary,
    finish_send_run,
    record_stopped_run,
    start_send_run,
)
from digest.delivery.state import release_claim, set_state
from digest.delivery.store import DeliveryStore, delivery_store
from digest.delivery.transmit import transmit
from digest.digests import (
    empty_reason,
    load_feedback_embeddings,
    profiles_for,
    ranking_config,
)
from digest.mailer import Mailer
from digest.models import DeliveryState, Subscriber
from digest.ranking import rank_prepared
from digest.schedule import local_date

log = logging.getLogger(__name__)


def send_deliveries(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    delivery_ids: Sequence[int],
    now: dt.datetime,
    cache: CorpusCache | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] | None = None,
    retry_now: bool = False,
    summary: SendSummary | None = None,
) -> SendSummary:
    """Claim these deliveries, rank their subscribers in one batch, render, record, send.

    Idempotent: deliveries that are sent, skipped, or being sent by a live worker are left
    alone, so a retried, duplicated or redelivered task sends nothing twice. `summary`, when
    given, is filled in as the batch goes (what was done counts even if the batch breaks).
    """
    run = SendContext(settings, mailer, now, progress=progress, sleep=sleep, clock=clock)
    if summary is not None:
        run.summary = summary
    store = delivery_store(session)
    # Objects loaded here are read after the commits below: keep them loaded, not expired.
    with _unexpired(session):
        claim = store.claim(session, delivery_ids, now=now, settings=settings, retry_now=retry_now)
        run.advance(len(delivery_ids) - len(claim))
        if not claim:
            return run.summary
        engine = session.get_bind()
        assert isinstance(engine, Engine)
        with LeaseKeeper(engine=engine, claim=claim, settings=settings, clock=clock) as lease:
            try:
                wanted, unwanted = still_wanted(load_claimed(session, claim))
                _record_skips(session, unwanted, run, claim)
                composed = compose(
                    session=session,
                    settings=settings,
                    now=now,
                    rows=wanted,
                    cache=cache or CorpusCache(),
                )
                _record(session, store, composed, run, claim)
            except Exception as exc:
                _give_back(session, claim, exc, run)
                raise
            if composed.outgoing:
                with store.outcomes(session, claim, settings) as writer:
                    transmit(outgoing=composed.outgoing, writer=writer, lease=lease, run=run)
    return run.summary


def _give_back(session: Session, claim: Claim, error: Exception, run: SendContext) -> None:
    """The batch broke before anything went out. A database that went away: its rows return
    to `planned` at once when it is back (else when their lease ends). Anything else (a
    template error, a bug): they fail for now, with the reason, and are retried with backoff
    instead of staying in `sending`."""
    try:
        session.rollback()
        if is_transient(error):
            session.execute(release_claim(claim.token), {"now": run.moment()})
            session.commit()
            return
        reason = f"could not prepare the digest: {error.__class__.__name__}: {error}"[:500]
        retry_at = run.moment() + dt.timedelta(seconds=run.settings.retry_base_seconds)
        for delivery_id in claim.ids:
            set_state(
                session,
                delivery_id,
                DeliveryState.FAILED,
                run.moment(),
                token=claim.token,
                reason=reason,
                retry_at=retry_at,
            )
    except Exception as exc:  # noqa: BLE001 - the store itself is away: the lease ends anyway
        log.warning(
            "claim_not_given_back claim=%s rows=%d error=%s (free again when the lease ends)",
            claim.token[:8],
            len(claim),
            exc.__class__.__name__,
        )


def _record(
    session: Session, store: DeliveryStore, composed: Composed, run: SendContext, claim: Claim
) -> None:
    """What this batch will send, before it is sent: a paper being sent already counts as sent
    to that person. Deliveries with nothing worth sending are skipped, with the reason."""
    if composed.digest_date is not None:
        run.summary.digest_date = composed.digest_date
    _record_skips(session, composed.skipped, run, claim)
    if composed.items:
        store.insert_items(session, composed.items)
        session.commit()


def _record_skips(session: Session, skipped: list[Skip], run: SendContext, claim: Claim) -> None:
    for delivery_id, address, reason in skipped:
        set_state(
            session, delivery_id, DeliveryState.SKIPPED, run.now, token=claim.token, reason=reason
        )
        run.summary.skipped.append((address, reason))
        run.advance()


@contextmanager
def _unexpired(session: Session) -> Iterator[None]:
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield
    finally:
        session.expire_on_commit = expire


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def send_due_digests(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    now: dt.datetime,
    digest_date: dt.date | None = None,
    email: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] | None = None,
) -> SendSummary:
    """Send every due digest (or one address's, or everyone's for a date) and record the run.

    `clock` (the CLI passes the real one) lets the batches keep their leases alive and record
    when each outcome happened."""
    plan = plan_deliveries(
        session=session,
        settings=settings,
        now=now,
        digest_date=digest_date,
        email=email,
        dry_run=dry_run,
    )
    summary = SendSummary(
        digest_date=digest_date or (min(plan.dates) if plan.dates else None), dry_run=dry_run
    )
    summary.skipped.extend(plan.skipped)
    if on_total:
        on_total(len(plan.delivery_ids) + len(plan.retry_ids))
    if dry_run:
        summary.merge(
            _dry_run(
                session=session,
                settings=settings,
                now=now,
                subscriber_ids=plan.delivery_ids,
                digest_date=digest_date,
                progress=progress,
            )
        )
        return summary
    run = start_send_run(session=session, now=now)
    cache = CorpusCache()
    try:
        # An explicit send also tries again, now, what failed temporarily for these dates.
        for batch in batches(plan.retry_ids + plan.delivery_ids, settings.send_batch_size):
            send_deliveries(
                session=session,
                mailer=mailer,
                settings=settings,
                delivery_ids=batch,
                now=now,
                cache=cache,
                progress=progress,
                sleep=sleep,
                clock=clock,
                retry_now=True,
                summary=summary,
            )
    except BaseException as error:
        # Stopped (Ctrl-C) or broken part-way. What was sent stays recorded as sent.
        record_stopped_run(session, run, summary, error, now)
        raise
    finish_send_run(session=session, run=run, summary=summary, now=now)
    return summary


def _dry_run(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    subscriber_ids: list[int],
    digest_date: dt.date | None,
    progress: Progress | None,
) -> SendSummary:
    """What a send would do: who would get how many papers, who nothing and why."""
    summary = SendSummary(dry_run=True)
    subscribers = list(
        session.execute(select(Subscriber).where(col(Subscriber.id).in_(subscriber_ids))).scalars()
    )
    if not subscribers:
        return summary
    day = digest_date or local_date(subscribers[0].timezone, now)
    corpus, _ = CorpusCache().get(session=session, settings=settings, digest_date=day, now=now)
    profiles = profiles_for(session=session, subscribers=subscribers)
    load_feedback_embeddings(session=session, settings=settings, corpus=corpus, profiles=profiles)
    for subscriber, picks in zip(
        subscribers, rank_prepared(corpus, profiles, config=ranking_config(settings)), strict=True
    ):
        if picks:
            summary.sent.append((subscriber.email, len(picks)))
        else:
            summary.skipped.append((subscriber.email, empty_reason(len(corpus.papers), settings)))
        if progress:
            progress(1)
    return summary
