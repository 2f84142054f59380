"""One subscriber's digest, built from the store: their profile, the ranking, the context the
templates render, the preview and the web copy of a digest that was sent.

The delivery package builds the same digests in batches (digest.delivery.compose); both go
through `profiles_for`, `ranking_config` and `digest_context`, so an email, its preview and its
web copy never differ.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from sqlmodel import Session, col, select

from digest.config import Settings
from digest.db import one_of
from digest.embedding_store import EmbeddingCache, paper_embeddings
from digest.encoder import load_encoder
from digest.errors import UserError
from digest.links import link_payload, subscriber_link
from digest.models import Delivery, DeliveryItem, DeliveryState, Feedback, Paper, Subscriber
from digest.paperstore import candidate_papers
from digest.ranking import (
    Pick,
    PreparedCorpus,
    Profile,
    RankingConfig,
    RankPaper,
    prepare_corpus,
    rank_prepared,
    remember_embeddings,
)
from digest.render import (
    DigestContext,
    DigestEntry,
    format_authors,
    render_digest_html,
    short_summary,
)
from digest.schedule import local_date
from digest.subscribers import get_subscriber
from digest.tokens import Purpose, make_token


def ranking_config(settings: Settings) -> RankingConfig:
    return RankingConfig(
        top_k=settings.digest_size,
        half_life_days=settings.half_life_days,
        min_relevance=settings.min_relevance,
        weight_topic=settings.weight_topic,
        weight_recency=settings.weight_recency,
        weight_trending=settings.weight_trending,
        # A worker ranks 250 subscribers per matrix product: the dense similarity blocks of a
        # batch stay small (results do not depend on the chunking).
        chunk_profiles=250,
    )


# Papers sent this many days back still count as sent: a candidate is at most a few days old by
# its dates, so older digests cannot hold one (the margin covers papers whose dates change).
SEEN_DAYS = 30


def sent_paper_ids(
    *, session: Session, subscriber_ids: Sequence[int], today: dt.date | None = None
) -> dict[int, set[str]]:
    """The papers each subscriber already received (or is being sent right now), in the
    digests of the last SEEN_DAYS days before `today` (all of them without `today`).

    Two index lookups (their deliveries by subscriber, then those deliveries' papers by
    delivery) instead of a join: with statistics from before the day's deliveries existed, a
    planner chose to scan every delivered paper ever, for each batch of 500 digests.
    """
    seen: dict[int, set[str]] = {sid: set() for sid in subscriber_ids}
    if not subscriber_ids:
        return seen
    statement = select(
        col(Delivery.id),
        col(Delivery.subscriber_id),
        col(Delivery.state),
        col(Delivery.digest_date),
    ).where(one_of(session, col(Delivery.subscriber_id), subscriber_ids))
    since = today - dt.timedelta(days=SEEN_DAYS) if today is not None else None
    counted = (DeliveryState.SENT.value, DeliveryState.SENDING.value)
    # State and date are checked here, not in the query, so that no stale estimate of how rare
    # they are can steer the database away from the subscriber index.
    owner = {
        delivery_id: subscriber_id
        for delivery_id, subscriber_id, state, day in session.execute(statement)
        if state in counted and (since is None or day >= since)
    }
    ids = list(owner)
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        rows = session.execute(
            select(col(DeliveryItem.delivery_id), col(DeliveryItem.paper_id)).where(
                one_of(session, col(DeliveryItem.delivery_id), chunk)
            )
        )
        for delivery_id, paper_id in rows:
            seen[owner[delivery_id]].add(paper_id)
    return seen


def profiles_for(
    *, session: Session, subscribers: Sequence[Subscriber], today: dt.date | None = None
) -> list[Profile]:
    ids = [stored_id(s) for s in subscribers]
    seen = sent_paper_ids(session=session, subscriber_ids=ids, today=today)
    liked: dict[int, list[RankPaper]] = {i: [] for i in ids}
    disliked: dict[int, list[RankPaper]] = {i: [] for i in ids}
    if ids:
        statement = (
            select(Feedback, Paper)
            .join(Paper, col(Paper.id) == col(Feedback.paper_id))
            .where(one_of(session, col(Feedback.subscriber_id), ids))
        )
        for feedback, paper in session.exec(statement):
            target = liked if feedback.value > 0 else disliked
            target[feedback.subscriber_id].append(RankPaper.of(paper))
    return [
        Profile(
            id=str(sid),
            topics=tuple(s.topics),
            exclude=tuple(s.exclude),
            liked=tuple(liked[sid]),
            disliked=tuple(disliked[sid]),
            seen=frozenset(seen[sid]),
        )
        for sid, s in zip(ids, subscribers, strict=True)
    ]


def load_feedback_embeddings(
    *,
    settings: Settings,
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    session: Session | None = None,
    cache: EmbeddingCache | None = None,
) -> None:
    """The stored embeddings of the profiles' liked and disliked papers that are not among the
    candidates, put where the ranking looks for them, from the store (`session`) or the file
    cache of `digest rank`; one never encoded is encoded now and kept (flushed to the session:
    the caller's transaction keeps it). A liked paper is encoded once, ever, instead of once a
    day in every worker process (~0.1 s each)."""
    if corpus.embedded_t is None:
        return
    encoder = load_encoder(kind=settings.encoder, threads=settings.encoder_threads)
    if encoder is None:
        return
    known = corpus.query_embeddings
    candidates = corpus.index
    wanted: dict[str, RankPaper] = {}
    for profile in profiles:
        for paper in (*profile.liked, *profile.disliked):
            if paper.id not in candidates and paper.embedding_text not in known:
                wanted.setdefault(paper.id, paper)
    if wanted:
        papers = list(wanted.values())
        rows = paper_embeddings(encoder=encoder, papers=papers, session=session, cache=cache)
        remember_embeddings(corpus, [p.embedding_text for p in papers], rows)


def stored_id(subscriber: Subscriber) -> int:
    """A stored subscriber's id: one that was never stored has no digest."""
    if subscriber.id is None:
        raise ValueError(f"subscriber {subscriber.email} is not stored")
    return subscriber.id


def digest_as_of(digest_date: dt.date, now: dt.datetime) -> dt.datetime:
    """The moment a digest is ranked at: now, or the end of a past digest date."""
    end = dt.datetime.combine(digest_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return min(now, end)


@dataclass
class Ranked:
    picks: dict[int, list[Pick]]
    papers: dict[str, Paper]
    candidates: int


def prepare_candidates(
    *,
    settings: Settings,
    papers: Sequence[Paper] | Sequence[RankPaper],
    as_of: dt.datetime,
    session: Session | None = None,
    cache: EmbeddingCache | None = None,
    config: RankingConfig | None = None,
) -> PreparedCorpus:
    """The candidates prepared for ranking: with the active encoder, their embeddings from the
    store (`session`) or a file cache (`cache`), a paper not encoded yet encoded now and kept,
    for hybrid relevance; without an encoder, TF-IDF alone."""
    encoder = load_encoder(kind=settings.encoder, threads=settings.encoder_threads)
    embeddings = None
    if encoder is not None and papers:
        embeddings = paper_embeddings(encoder=encoder, papers=papers, session=session, cache=cache)
    return prepare_corpus(
        [RankPaper.of(p) for p in papers],
        now=as_of,
        config=config or ranking_config(settings),
        encoder=encoder.encode if encoder is not None else None,
        embeddings=embeddings,
    )


def rank_for(
    *, session: Session, settings: Settings, subscribers: Sequence[Subscriber], as_of: dt.datetime
) -> Ranked:
    """Rank the candidate papers for every subscriber in one batch."""
    papers = candidate_papers(session=session, as_of=as_of, days=settings.candidate_days)
    profiles = profiles_for(session=session, subscribers=subscribers)
    picks: list[list[Pick]] = [[] for _ in profiles]
    if papers:
        corpus = prepare_candidates(session=session, settings=settings, papers=papers, as_of=as_of)
        load_feedback_embeddings(
            session=session, settings=settings, corpus=corpus, profiles=profiles
        )
        picks = rank_prepared(corpus, profiles)
    return Ranked(
        picks={s.id: p for s, p in zip(subscribers, picks, strict=True) if s.id is not None},
        papers={p.id: p for p in papers},
        candidates=len(papers),
    )


NOTHING_RELEVANT = "no new paper above the relevance threshold"
_NO_CANDIDATES = "no candidate papers from the last "


def empty_reason(candidates: int, settings: Settings) -> str:
    if candidates == 0:
        return f"{_NO_CANDIDATES}{settings.candidate_days} days"
    return NOTHING_RELEVANT


def is_empty_reason(reason: str | None) -> bool:
    """Whether a skipped digest was skipped for want of papers (which new papers may change),
    not for its subscriber's sake (unsubscribed, paused)."""
    return reason is not None and (reason == NOTHING_RELEVANT or reason.startswith(_NO_CANDIDATES))


# A paper's part of a digest entry, made once per paper object: a run sends the same few
# thousand papers (held by the corpus cache) to everyone. A weak reference to the object is
# kept with its parts, so that an id is never taken for another paper's and no paper is kept
# alive by this cache.
_ENTRY_PARTS: dict[tuple[int, str], tuple[weakref.ref[Paper], tuple[str, ...]]] = {}
ENTRY_PARTS_MAX = 20_000


def _entry_parts(paper: Paper, base_url: str) -> tuple[str, ...]:
    key = (id(paper), base_url)
    hit = _ENTRY_PARTS.get(key)
    if hit is not None and hit[0]() is paper:
        return hit[1]
    parts = (
        paper.id,
        paper.title,
        format_authors(paper.authors),
        short_summary(paper.ai_summary or paper.abstract),
        paper.url or f"{base_url}/papers/{paper.id}",
        f"?paper={quote(paper.id, safe='')}",
    )
    if len(_ENTRY_PARTS) >= ENTRY_PARTS_MAX:
        _ENTRY_PARTS.clear()
    _ENTRY_PARTS[key] = (weakref.ref(paper), parts)
    return parts


def digest_context(
    *,
    settings: Settings,
    subscriber: Subscriber,
    digest_date: dt.date,
    picks: Sequence[Pick],
    papers: dict[str, Paper],
) -> DigestContext:
    entries = []
    # One signed feedback token per digest: it says who votes; each link names its paper and
    # vote (a dozen signatures per message cost more than the rest of its links).
    feedback = subscriber_link(settings, "feedback", Purpose.FEEDBACK, subscriber)
    for pick in picks:
        paper_id, title, authors, summary, url, query = _entry_parts(
            papers[pick.paper_id], settings.base_url
        )
        entries.append(
            DigestEntry(
                paper_id=paper_id,
                title=title,
                authors=authors,
                summary=summary,
                url=url,
                why=pick.why,
                like_url=f"{feedback}/up{query}",
                dislike_url=f"{feedback}/down{query}",
            )
        )
    unsubscribe_token = make_token(
        settings.secret_key, Purpose.UNSUBSCRIBE, link_payload(subscriber)
    )
    return DigestContext(
        recipient=subscriber.email,
        digest_date=digest_date,
        entries=entries,
        web_url=subscriber_link(
            settings, "digest", Purpose.VIEW, subscriber, d=digest_date.isoformat()
        ),
        preferences_url=subscriber_link(settings, "preferences", Purpose.PREFERENCES, subscriber),
        unsubscribe_url=f"{settings.base_url}/unsubscribe/{unsubscribe_token}",
        unsubscribe_mailto=(
            f"mailto:{settings.unsubscribe_mailto}?subject=unsubscribe%20{unsubscribe_token}"
        ),
        base_url=settings.base_url,
        from_name=settings.from_name,
    )


def preview_digest(
    *,
    session: Session,
    settings: Settings,
    email: str,
    now: dt.datetime,
    digest_date: dt.date | None = None,
) -> tuple[str, list[Pick], str | None]:
    """The HTML of the digest this subscriber would get, its picks, and why it would be empty."""
    subscriber = get_subscriber(session=session, email=email)
    if subscriber is None:
        raise UserError(f"No subscriber with address {email}.")
    day = digest_date or local_date(subscriber.timezone, now)
    ranked = rank_for(
        session=session, settings=settings, subscribers=[subscriber], as_of=digest_as_of(day, now)
    )
    picks = ranked.picks[stored_id(subscriber)]
    context = digest_context(
        settings=settings, subscriber=subscriber, digest_date=day, picks=picks, papers=ranked.papers
    )
    html = render_digest_html(settings.templates_dir, context)
    return html, picks, None if picks else empty_reason(ranked.candidates, settings)


def sent_digest_html(
    *, session: Session, settings: Settings, subscriber_id: int, digest_date: dt.date
) -> str | None:
    """The web copy of a digest that was sent: the same papers and reasons as the email."""
    subscriber = session.get(Subscriber, subscriber_id)
    delivery = session.exec(
        select(Delivery).where(
            Delivery.subscriber_id == subscriber_id, Delivery.digest_date == digest_date
        )
    ).first()
    if subscriber is None or delivery is None or delivery.state != DeliveryState.SENT:
        return None
    items = list(
        session.exec(
            select(DeliveryItem)
            .where(DeliveryItem.delivery_id == delivery.id)
            .order_by(col(DeliveryItem.rank))
        )
    )
    papers = {
        p.id: p
        for p in session.exec(select(Paper).where(col(Paper.id).in_([i.paper_id for i in items])))
    }
    picks = [
        Pick(paper_id=i.paper_id, score=i.score, why=i.why, relevance=0.0, matched="")
        for i in items
    ]
    context = digest_context(
        settings=settings,
        subscriber=subscriber,
        digest_date=digest_date,
        picks=picks,
        papers=papers,
    )
    return render_digest_html(settings.templates_dir, context)
