"""Where I/O meets the pure parts: store papers, manage subscribers, build and send digests.

Every function takes its session, settings and `now` as parameters; only the edges (CLI, web,
Celery tasks) read the clock or build the engine.
"""

from __future__ import annotations

import datetime as dt
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from digest.config import Settings
from digest.db import one_of
from digest.errors import UserError
from digest.links import signed_link
from digest.mailer import Mailer
from digest.models import (
    Delivery,
    DeliveryItem,
    DeliveryState,
    Feedback,
    Frequency,
    Paper,
    Run,
    Subscriber,
    SubscriberStatus,
)
from digest.papers import BadLine, OversizeLine, PaperIn, read_papers
from digest.ranking import Pick, Profile, RankingConfig, RankPaper, rank_papers
from digest.render import (
    DigestContext,
    DigestEntry,
    Envelope,
    format_authors,
    render_confirmation,
    render_digest_html,
    short_summary,
)
from digest.schedule import local_date, zone
from digest.tokens import Purpose, make_token

Progress = Callable[[int], None]
MAX_TOPICS = 20
MAX_TOPIC_LENGTH = 100
SUPPRESS_AFTER_PERMANENT_FAILURES = 3


# ---------------------------------------------------------------------------------------------
# Papers


@dataclass
class UpsertResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _merge(paper: Paper, incoming: PaperIn, now: dt.datetime) -> bool:
    """Fold the richer fields of `incoming` into the stored paper; True if anything changed."""
    changed = False

    def put(name: str, value: object) -> None:
        nonlocal changed
        if getattr(paper, name) != value:
            setattr(paper, name, value)
            changed = True

    if len(incoming.abstract) > len(paper.abstract):
        put("abstract", incoming.abstract)
    for name in ("url", "comment", "ai_summary", "github_repo", "published"):
        value = getattr(incoming, name)
        if value is not None and getattr(paper, name) is None:
            put(name, value)
    # Counts change over days: the latest observation wins.
    for name in ("upvotes", "comments", "github_stars"):
        value = getattr(incoming, name)
        if value is not None:
            put(name, value)
    if incoming.authors and not paper.authors:
        put("authors", list(incoming.authors))
    for name in ("categories", "ai_keywords"):
        merged = list(dict.fromkeys([*getattr(paper, name), *getattr(incoming, name)]))
        put(name, merged)
    if incoming.source and incoming.source not in paper.sources:
        put("sources", [*paper.sources, incoming.source])
    if incoming.first_seen is not None and incoming.first_seen < paper.first_seen:
        put("first_seen", incoming.first_seen)
    if changed:
        paper.updated_at = now
    return changed


def upsert_papers(*, session: Session, papers: Iterable[PaperIn], now: dt.datetime) -> UpsertResult:
    """Insert new papers and merge known ones (same id); commits once at the end."""
    result = UpsertResult()
    batch: dict[str, PaperIn] = {}
    for paper in papers:
        if paper.id in batch:
            # The same paper twice in one input: merge into one.
            merged = batch[paper.id].model_copy(
                update={k: v for k, v in paper.model_dump().items() if v not in (None, [], "")}
            )
            batch[paper.id] = merged
        else:
            batch[paper.id] = paper
    ids = list(batch)
    existing: dict[str, Paper] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for stored in session.exec(select(Paper).where(col(Paper.id).in_(chunk))):
            existing[stored.id] = stored
    for paper_id, incoming in batch.items():
        known = existing.get(paper_id)
        if known is None:
            session.add(
                Paper(
                    id=incoming.id,
                    title=incoming.title,
                    abstract=incoming.abstract,
                    authors=list(incoming.authors),
                    published=incoming.published,
                    first_seen=incoming.first_seen or now,
                    updated_at=now,
                    url=incoming.url,
                    categories=list(incoming.categories),
                    upvotes=incoming.upvotes,
                    comments=incoming.comments,
                    github_repo=incoming.github_repo,
                    github_stars=incoming.github_stars,
                    ai_summary=incoming.ai_summary,
                    ai_keywords=list(incoming.ai_keywords),
                    comment=incoming.comment,
                    sources=[incoming.source] if incoming.source else [],
                )
            )
            result.new += 1
        elif _merge(known, incoming, now):
            result.updated += 1
        else:
            result.unchanged += 1
    session.commit()
    return result


@dataclass
class ImportReport:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.new + self.updated + self.unchanged


def import_papers(
    *,
    session: Session,
    lines: Iterable[str | bytes | OversizeLine],
    now: dt.datetime,
    batch_size: int = 2000,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a JSON Lines paper file; bad lines are reported and skipped, good ones kept."""
    report = ImportReport()
    pending: list[PaperIn] = []

    def flush() -> None:
        from digest.bulk import bulk_upsert_papers

        new, updated, unchanged = bulk_upsert_papers(session=session, papers=pending, now=now)
        report.new += new
        report.updated += updated
        report.unchanged += unchanged
        if progress:
            progress(len(pending))
        pending.clear()

    for item in read_papers(lines):
        if isinstance(item, BadLine):
            report.bad_lines.append(item)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return report


def load_seeds(*, session: Session, settings: Settings, now: dt.datetime) -> ImportReport:
    path = settings.seeds_dir / "papers.jsonl"
    with path.open(encoding="utf-8") as handle:
        return import_papers(session=session, lines=handle, now=now)


def candidate_papers(*, session: Session, as_of: dt.datetime, days: int) -> list[Paper]:
    """Papers first listed or published within `days` before `as_of`, by id.

    The order is fixed so that every caller (the send, the preview) ranks the same corpus the
    same way, whatever order the database would return.
    """
    since = as_of - dt.timedelta(days=days)
    statement = (
        select(Paper)
        .where(
            ((col(Paper.first_seen) >= since) & (col(Paper.first_seen) <= as_of))
            | ((col(Paper.published) >= since) & (col(Paper.published) <= as_of))
        )
        .order_by(col(Paper.id))
    )
    return list(session.exec(statement))


# ---------------------------------------------------------------------------------------------
# Subscribers


def normalize_email(raw: str) -> str:
    """The validated, normalised address, or a UserError saying what is wrong with it."""
    if any(ch in raw for ch in "\r\n\0"):
        raise UserError("An email address cannot contain line breaks.")
    try:
        # Digests go out over plain SMTP: a non-ASCII local part would need SMTPUTF8 end to
        # end, so it is refused here, with the reason; an internationalised domain is kept in
        # its ASCII (IDNA) form, which every server takes.
        result = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise UserError(f"That email address is not valid: {exc}") from exc
    return (result.ascii_email or result.normalized).lower()


def clean_terms(raw: Iterable[str], what: str = "topic") -> list[str]:
    """Deduplicated, trimmed topics or excluded terms, within the length limits."""
    terms: list[str] = []
    for term in raw:
        if any(ch in term for ch in "\r\n\0"):
            raise UserError(f"A {what} cannot contain line breaks.")
        term = " ".join(term.split())
        if not term:
            continue
        if len(term) > MAX_TOPIC_LENGTH:
            raise UserError(f"A {what} can be at most {MAX_TOPIC_LENGTH} characters long.")
        if term.casefold() not in {t.casefold() for t in terms}:
            terms.append(term)
    if len(terms) > MAX_TOPICS:
        raise UserError(f"At most {MAX_TOPICS} {what}s, please.")
    return terms


def split_terms(text: str) -> list[str]:
    """Topics typed as one string: separated by commas, semicolons or new lines."""
    for sep in (";", "\n", "\r"):
        text = text.replace(sep, ",")
    return [part for part in text.split(",")]


def get_subscriber(*, session: Session, email: str) -> Subscriber | None:
    return session.exec(
        select(Subscriber).where(Subscriber.email == normalize_email(email))
    ).first()


def add_subscriber(
    *,
    session: Session,
    email: str,
    topics: Sequence[str],
    now: dt.datetime,
    exclude: Sequence[str] = (),
    status: SubscriberStatus = SubscriberStatus.ACTIVE,
    send_hour: int = 7,
    timezone: str = "UTC",
    frequency: Frequency = Frequency.DAILY,
    weekly_day: int = 0,
) -> Subscriber:
    """Add (or re-activate and update) a subscriber; the admin path, no confirmation email."""
    address = normalize_email(email)
    zone(timezone)
    if not 0 <= send_hour <= 23:
        raise UserError("The send hour must be between 0 and 23.")
    subscriber = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None:
        subscriber = Subscriber(email=address, created_at=now)
    subscriber.topics = clean_terms(topics)
    subscriber.exclude = clean_terms(exclude, "excluded term")
    subscriber.status = status.value
    subscriber.send_hour = send_hour
    subscriber.timezone = timezone
    subscriber.frequency = frequency.value
    subscriber.weekly_day = weekly_day
    if status == SubscriberStatus.ACTIVE:
        subscriber.confirmed_at = subscriber.confirmed_at or now
        subscriber.unsubscribed_at = None
    session.add(subscriber)
    session.commit()
    session.refresh(subscriber)
    return subscriber


def remove_subscriber(*, session: Session, email: str) -> bool:
    """Delete a subscriber and their history; True if they existed."""
    subscriber = get_subscriber(session=session, email=email)
    if subscriber is None:
        return False
    # Children first, as explicit statements: the tables have no ORM relationships to order them.
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber.id)
    session.execute(delete(DeliveryItem).where(col(DeliveryItem.delivery_id).in_(delivery_ids)))
    session.execute(delete(Delivery).where(col(Delivery.subscriber_id) == subscriber.id))
    session.execute(delete(Feedback).where(col(Feedback.subscriber_id) == subscriber.id))
    session.delete(subscriber)
    session.commit()
    return True


def list_subscribers(*, session: Session) -> list[Subscriber]:
    return list(session.exec(select(Subscriber).order_by(col(Subscriber.email))))


def unsubscribe(*, session: Session, subscriber_id: int, now: dt.datetime) -> Subscriber | None:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        subscriber.status = SubscriberStatus.UNSUBSCRIBED.value
        subscriber.unsubscribed_at = now
        session.add(subscriber)
        session.commit()
    return subscriber


def request_subscription(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    email: str,
    topics: Sequence[str],
    now: dt.datetime,
    exclude: Sequence[str] = (),
    frequency: str | None = None,
    weekly_day: int | None = None,
    send_hour: int | None = None,
    timezone: str | None = None,
) -> None:
    """Double opt-in, step one: store a pending subscriber and mail a signed confirmation link.

    The same happens whether or not the address is known, so the response reveals nothing:
    both paths validate, write one row in one commit, render and send one confirmation.
    """
    address = normalize_email(email)
    topics = clean_terms(topics)
    exclude = clean_terms(exclude, "excluded term")
    if not topics:
        raise UserError("Please give at least one topic.")
    schedule = clean_schedule(
        frequency=frequency or Frequency.DAILY.value,
        weekly_day=0 if weekly_day is None else weekly_day,
        send_hour=settings.default_send_hour if send_hour is None else send_hour,
        timezone=timezone or settings.default_timezone,
    )
    subscriber = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None:
        subscriber = Subscriber(
            email=address, created_at=now, topics=topics, exclude=exclude, **schedule
        )
        session.add(subscriber)
        session.commit()
    else:
        # A write of the same size as the insert above, so that a known address costs what an
        # unknown one does (same timing class). Its topics and schedule change only once the
        # new request is confirmed.
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == subscriber.id)
            .values(bounce_count=Subscriber.bounce_count)
        )
        session.commit()
    token = make_token(
        settings.secret_key,
        Purpose.CONFIRM,
        {"s": subscriber.id, "topics": topics, "exclude": exclude, "schedule": schedule},
    )
    message = render_confirmation(
        settings.templates_dir,
        envelope=_envelope(settings, address, now),
        confirm_url=f"{settings.base_url}/confirm/{token}",
        from_name=settings.from_name,
        base_url=settings.base_url,
        valid_days=max(1, settings.confirm_max_age // 86400),
    )
    with mailer.connect() as connection:
        connection.send(message)


class Schedule(TypedDict):
    frequency: str
    weekly_day: int
    send_hour: int
    timezone: str


def clean_schedule(*, frequency: str, weekly_day: int, send_hour: int, timezone: str) -> Schedule:
    """A validated schedule (the Subscriber fields), or a UserError saying what is wrong."""
    for value in (frequency, timezone):
        if any(ch in str(value) for ch in "\r\n\0"):
            raise UserError("A frequency or time zone cannot contain line breaks.")
    if frequency not in (Frequency.DAILY, Frequency.WEEKLY):
        raise UserError("Frequency must be daily or weekly.")
    if not isinstance(weekly_day, int) or not 0 <= weekly_day <= 6:
        raise UserError("Choose a day of the week from the list.")
    if not isinstance(send_hour, int) or not 0 <= send_hour <= 23:
        raise UserError("The send hour must be between 0 and 23.")
    timezone = str(timezone).strip()
    if len(timezone) > 64:
        raise UserError("That time zone name is too long; use a name like Europe/Paris.")
    try:
        zone(timezone)
    except ValueError as exc:
        raise UserError(f"Unknown time zone {timezone!r}; use a name like Europe/Paris.") from exc
    return Schedule(
        frequency=str(frequency), weekly_day=weekly_day, send_hour=send_hour, timezone=timezone
    )


def confirm_subscription(
    *, session: Session, payload: dict[str, object], now: dt.datetime
) -> Subscriber | None:
    subscriber_id = payload.get("s")
    subscriber = session.get(Subscriber, subscriber_id) if isinstance(subscriber_id, int) else None
    if subscriber is None:
        return None
    topics = payload.get("topics")
    exclude = payload.get("exclude")
    if isinstance(topics, list) and topics:
        subscriber.topics = clean_terms(str(t) for t in topics)
    if isinstance(exclude, list):
        subscriber.exclude = clean_terms((str(t) for t in exclude), "excluded term")
    schedule = payload.get("schedule")
    if isinstance(schedule, dict):
        try:
            checked = clean_schedule(**schedule)
        except (TypeError, UserError):
            checked = None  # a link from another version: confirm, keep the stored schedule
        for name, value in (checked or {}).items():
            setattr(subscriber, name, value)
    subscriber.status = SubscriberStatus.ACTIVE.value
    subscriber.confirmed_at = now
    subscriber.unsubscribed_at = None
    session.add(subscriber)
    session.commit()
    return subscriber


# ---------------------------------------------------------------------------------------------
# Digests


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
    ids = [s.id for s in subscribers if s.id is not None]
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
    profiles = []
    for s in subscribers:
        assert s.id is not None
        profiles.append(
            Profile(
                id=str(s.id),
                topics=tuple(s.topics),
                exclude=tuple(s.exclude),
                liked=tuple(liked[s.id]),
                disliked=tuple(disliked[s.id]),
                seen=frozenset(seen[s.id]),
            )
        )
    return profiles


def digest_as_of(digest_date: dt.date, now: dt.datetime) -> dt.datetime:
    """The moment a digest is ranked at: now, or the end of a past digest date."""
    end = dt.datetime.combine(digest_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return min(now, end)


@dataclass
class Ranked:
    picks: dict[int, list[Pick]]
    papers: dict[str, Paper]
    candidates: int


def rank_for(
    *, session: Session, settings: Settings, subscribers: Sequence[Subscriber], as_of: dt.datetime
) -> Ranked:
    """Rank the candidate papers for every subscriber in one batch."""
    papers = candidate_papers(session=session, as_of=as_of, days=settings.candidate_days)
    profiles = profiles_for(session=session, subscribers=subscribers)
    picks = rank_papers(
        [RankPaper.of(p) for p in papers], profiles, now=as_of, config=ranking_config(settings)
    )
    return Ranked(
        picks={s.id: p for s, p in zip(subscribers, picks, strict=True) if s.id is not None},
        papers={p.id: p for p in papers},
        candidates=len(papers),
    )


def empty_reason(candidates: int, settings: Settings) -> str:
    if candidates == 0:
        return f"no candidate papers from the last {settings.candidate_days} days"
    return "no new paper above the relevance threshold"


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
    sid = subscriber.id
    entries = []
    # One signed feedback token per digest: it says who votes; each link names its paper and
    # vote (a dozen signatures per message cost more than the rest of its links).
    feedback = signed_link(settings, "feedback", Purpose.FEEDBACK, {"s": sid})
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
    unsubscribe_token = make_token(settings.secret_key, Purpose.UNSUBSCRIBE, {"s": sid})
    return DigestContext(
        recipient=subscriber.email,
        digest_date=digest_date,
        entries=entries,
        web_url=signed_link(
            settings, "digest", Purpose.VIEW, {"s": sid, "d": digest_date.isoformat()}
        ),
        preferences_url=signed_link(settings, "preferences", Purpose.PREFERENCES, {"s": sid}),
        unsubscribe_url=f"{settings.base_url}/unsubscribe/{unsubscribe_token}",
        unsubscribe_mailto=(
            f"mailto:{settings.unsubscribe_mailto}?subject=unsubscribe%20{unsubscribe_token}"
        ),
        base_url=settings.base_url,
        from_name=settings.from_name,
    )


def new_message_ids(domain: str, count: int) -> list[str]:
    """`count` unique Message-IDs: 128 random bits each, drawn in one call (the planner makes
    a page of thousands at once)."""
    random_hex = os.urandom(16 * count).hex()
    return [f"<{random_hex[32 * n : 32 * n + 32]}.digest@{domain}>" for n in range(count)]


def new_message_id(domain: str) -> str:
    return new_message_ids(domain, 1)[0]


def _envelope(settings: Settings, recipient: str, now: dt.datetime) -> Envelope:
    return Envelope(
        sender_name=settings.from_name,
        sender_address=settings.from_address,
        recipient=recipient,
        message_id=new_message_id(settings.from_address.rsplit("@", 1)[-1]),
        now=now,
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
    assert subscriber.id is not None
    picks = ranked.picks[subscriber.id]
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


def record_feedback(
    *, session: Session, subscriber_id: int, paper_id: str, value: int, now: dt.datetime
) -> bool:
    """Store 👍 (+1) or 👎 (-1) for a paper; the latest vote wins. False if unknown ids."""
    if session.get(Subscriber, subscriber_id) is None or session.get(Paper, paper_id) is None:
        return False
    vote = 1 if value > 0 else -1
    feedback = session.exec(
        select(Feedback).where(
            Feedback.subscriber_id == subscriber_id, Feedback.paper_id == paper_id
        )
    ).first()
    if feedback is None:
        feedback = Feedback(
            subscriber_id=subscriber_id, paper_id=paper_id, value=vote, created_at=now
        )
    feedback.value = vote
    feedback.created_at = now
    session.add(feedback)
    session.commit()
    return True


def last_runs(*, session: Session, limit: int = 10) -> list[Run]:
    return list(
        session.exec(
            select(Run).order_by(col(Run.started_at).desc(), col(Run.id).desc()).limit(limit)
        )
    )


def export_papers(*, session: Session) -> Iterable[PaperIn]:
    for paper in session.exec(select(Paper).order_by(col(Paper.first_seen), col(Paper.id))):
        yield PaperIn(
            id=paper.id,
            title=paper.title,
            abstract=paper.abstract,
            authors=paper.authors,
            published=paper.published,
            url=paper.url,
            categories=paper.categories,
            upvotes=paper.upvotes,
            comments=paper.comments,
            source=",".join(paper.sources) or None,
            first_seen=paper.first_seen,
            github_repo=paper.github_repo,
            github_stars=paper.github_stars,
            ai_summary=paper.ai_summary,
            ai_keywords=paper.ai_keywords,
            comment=paper.comment,
        )


def outbox_path(settings: Settings) -> Path:
    return settings.outbox_dir.resolve()


def update_preferences(
    *,
    session: Session,
    subscriber_id: int,
    topics: Sequence[str],
    exclude: Sequence[str],
    frequency: str,
    weekly_day: int,
    send_hour: int,
    timezone: str,
    pause_days: int,
    today: dt.date,
) -> Subscriber:
    """Validate everything first, then change the subscriber; bad input changes nothing."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise UserError("This subscription no longer exists.")
    clean_topics = clean_terms(topics)
    if not clean_topics:
        raise UserError("Please keep at least one topic.")
    clean_exclude = clean_terms(exclude, "excluded term")
    if frequency not in (Frequency.DAILY, Frequency.WEEKLY):
        raise UserError("Frequency must be daily or weekly.")
    if not 0 <= weekly_day <= 6 or not 0 <= send_hour <= 23:
        raise UserError("Choose a day of the week and an hour from the lists.")
    if any(ch in timezone for ch in "\r\n\0"):
        raise UserError("A time zone cannot contain line breaks.")
    try:
        zone(timezone)
    except ValueError as exc:
        raise UserError(f"Unknown time zone {timezone!r}; use a name like Europe/Paris.") from exc
    if not 0 <= pause_days <= 365:
        raise UserError("Pause for 0 to 365 days.")
    subscriber.topics = clean_topics
    subscriber.exclude = clean_exclude
    subscriber.frequency = frequency
    subscriber.weekly_day = weekly_day
    subscriber.send_hour = send_hour
    subscriber.timezone = timezone
    subscriber.paused_until = today + dt.timedelta(days=pause_days) if pause_days else None
    session.add(subscriber)
    session.commit()
    return subscriber


def ingest(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    source: str | None = None,
    day: dt.date | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """One recorded ingestion run per source (`source`, or every configured one).

    Each run says what it fetched, what was new or updated, what was bad and, when nothing was
    new, why (see digest.ingestion). A failed fetch stores nothing and deletes nothing.
    """
    from digest.ingestion import ingest_source

    runs = []
    for name in [source] if source else settings.ingest_sources:
        run = ingest_source(
            session=session,
            settings=settings,
            source=name,
            now=now,
            day=day,
            categories=categories,
        )
        runs.append({"run": run.id, "status": run.status, **run.summary})
    return {"runs": runs}


def topic_suggestions(*, session: Session, limit: int = 24, recent: int = 3000) -> list[str]:
    """Phrases that recur across the most recently seen papers, for the subscribe page."""
    from digest.suggestions import suggest_topics

    rows = session.exec(
        select(Paper.title, Paper.ai_keywords).order_by(col(Paper.first_seen).desc()).limit(recent)
    )
    return suggest_topics(((title, keywords or []) for title, keywords in rows), limit=limit)
