"""Claimed deliveries and the day's prepared corpus in, outgoing messages out: who still gets
a digest, each subscriber's picks, the digest context, the envelope and the rendered message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import delete, select
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import one_of
from digest.delivery.corpus_cache import CorpusCache
from digest.delivery.outcomes import Claim
from digest.delivery.planner import status_reason, window_of
from digest.digests import (
    digest_context,
    empty_reason,
    load_feedback_embeddings,
    profiles_for,
    ranking_config,
)
from digest.envelope import bounce_address, envelope
from digest.models import Delivery, DeliveryItem, Paper, Subscriber
from digest.ranking import Pick, rank_prepared
from digest.render import Mail, render_digest
from digest.schedule import not_due_reason


class Claimed(NamedTuple):
    """What sending needs of a claimed delivery row."""

    id: int
    digest_date: dt.date
    message_id: str | None
    attempts: int
    created_at: dt.datetime


@dataclass
class Outgoing:
    delivery_id: int
    subscriber: Subscriber
    picks: list[Pick]
    message: Mail
    attempts: int
    created_at: dt.datetime


# A delivery that gets no digest: its id, the address, and why.
Skip = tuple[int, str, str]


@dataclass
class Composed:
    outgoing: list[Outgoing] = field(default_factory=list)
    # The papers of each outgoing digest, as delivery item rows.
    items: list[dict[str, Any]] = field(default_factory=list)
    # Nothing worth sending (no pick above the threshold).
    skipped: list[Skip] = field(default_factory=list)
    # The last digest date composed.
    digest_date: dt.date | None = None


def load_claimed(session: Session, claim: Claim) -> list[tuple[Claimed, Subscriber]]:
    """The claimed rows with their subscribers; the items of an earlier, failed attempt are
    removed, to be replaced by this attempt's picks."""
    # The claimed rows' few columns as tuples (only subscribers are needed as objects):
    # building ORM objects for both cost more than the query.
    rows = [
        (Claimed(*row[:5]), row[5])
        for row in session.execute(
            select(
                col(Delivery.id),
                col(Delivery.digest_date),
                col(Delivery.message_id),
                col(Delivery.attempts),
                col(Delivery.created_at),
                Subscriber,
            )
            .join(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
            .where(one_of(session, col(Delivery.id), claim.ids))
            .order_by(col(Delivery.id))
        )
    ]
    # A first attempt has no items: no statement, which stale statistics could turn into a scan.
    retried = [d.id for d, _ in rows if d.attempts > 1]
    if retried:
        session.execute(delete(DeliveryItem).where(col(DeliveryItem.delivery_id).in_(retried)))
        session.commit()
    return rows


def still_wanted(
    rows: Sequence[tuple[Claimed, Subscriber]],
) -> tuple[list[tuple[Claimed, Subscriber]], list[Skip]]:
    """Unsubscribing (or a pause) between planning and sending is honoured, always: the rows
    whose subscriber still wants this digest, and the others with the reason."""
    wanted, skipped = [], []
    for delivery, subscriber in rows:
        reason = status_reason(subscriber) or not_due_reason(
            window_of(subscriber), delivery.digest_date
        )
        if reason:
            skipped.append((delivery.id, subscriber.email, reason))
        else:
            wanted.append((delivery, subscriber))
    return wanted, skipped


def compose(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    rows: Sequence[tuple[Claimed, Subscriber]],
    cache: CorpusCache,
) -> Composed:
    """Rank each digest date's subscribers in one batch against that date's corpus, and build
    a message for each one with picks."""
    composed = Composed()
    by_date: dict[dt.date, list[tuple[Claimed, Subscriber]]] = {}
    for delivery, subscriber in rows:
        by_date.setdefault(delivery.digest_date, []).append((delivery, subscriber))
    for day, pairs in sorted(by_date.items()):
        composed.digest_date = day
        corpus, papers = cache.get(session=session, settings=settings, digest_date=day, now=now)
        profiles = profiles_for(session=session, subscribers=[s for _, s in pairs], today=day)
        load_feedback_embeddings(
            session=session, settings=settings, corpus=corpus, profiles=profiles
        )
        picks_per = rank_prepared(corpus, profiles, config=ranking_config(settings))
        for (delivery, subscriber), picks in zip(pairs, picks_per, strict=True):
            if not picks:
                reason = empty_reason(len(corpus.papers), settings)
                composed.skipped.append((delivery.id, subscriber.email, reason))
                continue
            message = _message(settings, subscriber, delivery, picks, papers, now)
            composed.outgoing.append(
                Outgoing(
                    delivery.id, subscriber, picks, message, delivery.attempts, delivery.created_at
                )
            )
            composed.items.extend(item_rows(delivery.id, picks))
    return composed


def _message(
    settings: Settings,
    subscriber: Subscriber,
    delivery: Claimed,
    picks: list[Pick],
    papers: dict[str, Paper],
    now: dt.datetime,
) -> Mail:
    context = digest_context(
        settings=settings,
        subscriber=subscriber,
        digest_date=delivery.digest_date,
        picks=picks,
        papers=papers,
    )
    # The Message-ID was drawn at planning: a retried message is the same message.
    mail_envelope = envelope(
        settings,
        subscriber.email,
        now,
        delivery.message_id,
        return_path=bounce_address(settings, delivery.id),
    )
    return render_digest(settings.templates_dir, context, mail_envelope)


def item_rows(delivery_id: int, picks: Sequence[Pick]) -> list[dict[str, Any]]:
    return [
        {
            "delivery_id": delivery_id,
            "paper_id": p.paper_id,
            "rank": rank,
            "score": p.score,
            "why": p.why,
        }
        for rank, p in enumerate(picks, start=1)
    ]
