"""Factories for test data: one place that knows what a valid paper, profile, subscriber or
delivery looks like; the stored ones go through the product's own store functions."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from digest import paperstore, subscribers
from digest.delivery.store import delivery_store
from digest.envelope import new_message_id
from digest.links import link_payload
from digest.models import Delivery, Subscriber
from digest.papers import PaperIn
from digest.ranking import Profile, RankPaper
from digest.tokens import Purpose, make_token

NOW = dt.datetime(2026, 6, 12, 8, 0, tzinfo=dt.UTC)
_counter = itertools.count(1)


def make_paper(**overrides: Any) -> PaperIn:
    n = next(_counter)
    data: dict[str, Any] = {
        "id": f"2606.{n:05d}",
        "title": f"A study of topic {n}",
        "abstract": f"We study topic {n} with careful experiments.",
        "authors": ["Ada Lovelace", "Alan Turing"],
        "published": NOW - dt.timedelta(days=1),
        "url": f"https://arxiv.org/abs/2606.{n:05d}",
    }
    data.update(overrides)
    return PaperIn.model_validate(data)


def make_rank_paper(**overrides: Any) -> RankPaper:
    n = next(_counter)
    data: dict[str, Any] = {
        "id": f"r{n}",
        "title": f"Unrelated note number {n}",
        "abstract": "Nothing in particular is studied here.",
        "published": NOW - dt.timedelta(days=1),
    }
    data.update(overrides)
    return RankPaper(**data)


def make_profile(**overrides: Any) -> Profile:
    data: dict[str, Any] = {"id": "p1", "topics": ("diffusion models",)}
    data.update(overrides)
    return Profile(**data)


def make_subscriber(session: Session, **overrides: Any) -> Subscriber:
    """A stored subscriber, through the admin path (`add_subscriber`): confirmed (active) by
    default, interested in diffusion models, daily at 07:00 UTC, a new address on each call."""
    n = next(_counter)
    data: dict[str, Any] = {
        "email": f"reader{n}@example.com",
        "topics": ["diffusion models"],
        "now": NOW,
    }
    data.update(overrides)
    return subscribers.add_subscriber(session=session, **data)


def link_token(secret_key: str, purpose: Purpose, subscriber: Subscriber, **extra: Any) -> str:
    """The token of a signed link for this subscriber, made as the product makes it."""
    return make_token(secret_key, purpose, link_payload(subscriber, **extra))


def make_delivery(
    session: Session,
    subscriber: Subscriber,
    *,
    digest_date: dt.date | None = None,
    now: dt.datetime = NOW,
    paper_ids: Sequence[str] = (),
    **overrides: Any,
) -> Delivery:
    """A delivery of `subscriber`, planned through the delivery store as the planner plans it
    (for NOW's date unless told), then given the `overrides` (state, attempts, ...), with the
    papers `paper_ids` as its items, in that order."""
    if subscriber.id is None:
        raise ValueError("make_delivery needs a stored subscriber")
    store = delivery_store(session)
    day = digest_date or now.date()
    (delivery_id,) = store.insert_planned(
        session, [(subscriber.id, day, new_message_id("digest.test"))], now
    )
    store.insert_items(
        session,
        [
            {
                "delivery_id": delivery_id,
                "paper_id": paper_id,
                "rank": rank,
                "score": 1.0,
                "why": "x",
            }
            for rank, paper_id in enumerate(paper_ids, start=1)
        ],
    )
    session.commit()
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise AssertionError(f"planned delivery {delivery_id} not found")
    for name, value in overrides.items():
        setattr(delivery, name, value.value if isinstance(value, StrEnum) else value)
    session.add(delivery)
    session.commit()
    session.refresh(delivery)
    return delivery


def diffusion_papers(n: int = 12) -> list[PaperIn]:
    """The test papers of the seeded store: `n` on diffusion models, one on legged robots."""
    papers = [
        make_paper(
            title=f"Diffusion models trick {i}",
            abstract=f"Diffusion models improved by trick {i} of {i * 13} steps.",
        )
        for i in range(n)
    ]
    papers.append(
        make_paper(
            title="Legged robots walk", abstract="Legged robots learn to walk on rough ground."
        )
    )
    return papers


def store_papers(
    session: Session, papers: Sequence[PaperIn], now: dt.datetime = NOW
) -> paperstore.UpsertResult:
    """Store papers the way ingestion does (the one upsert path)."""
    return paperstore.upsert_papers(session=session, papers=list(papers), now=now)
