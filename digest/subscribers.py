"""Subscribers: addresses and topics validated once, the schedule validated once, double opt-in
(request, confirm), unsubscribe, preferences and 👍/👎 feedback; when a subscription ends or
starts again, so that the links of an earlier one stop working."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict, cast

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import CursorResult, delete, update
from sqlmodel import Session, col, select

from digest.config import Settings
from digest.errors import UserError
from digest.links import link_payload
from digest.logs import event
from digest.mailer import Mailer
from digest.models import (
    Bounce,
    Delivery,
    DeliveryItem,
    Feedback,
    Frequency,
    Paper,
    Subscriber,
    SubscriberStatus,
    SuppressionEvent,
    new_link_key,
)
from digest.render import Envelope, render_confirmation
from digest.schedule import zone
from digest.tokens import Purpose, make_token

MAX_TOPICS = 20
MAX_TOPIC_LENGTH = 100
MAX_TIMEZONE_LENGTH = 64
MAX_PAUSE_DAYS = 365
log = logging.getLogger(__name__)


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


class Schedule(TypedDict):
    frequency: str
    weekly_day: int
    send_hour: int
    timezone: str


def clean_schedule(*, frequency: str, weekly_day: int, send_hour: int, timezone: str) -> Schedule:
    """A validated schedule (the Subscriber fields), or a UserError saying what is wrong.

    The one schedule check: the CLI, the subscribe form, the preferences form and confirmation
    links all go through it."""
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
    if len(timezone) > MAX_TIMEZONE_LENGTH:
        raise UserError("That time zone name is too long; use a name like Europe/Paris.")
    try:
        zone(timezone)
    except ValueError as exc:
        raise UserError(f"Unknown time zone {timezone!r}; use a name like Europe/Paris.") from exc
    return Schedule(
        frequency=str(frequency), weekly_day=weekly_day, send_hour=send_hour, timezone=timezone
    )


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
    schedule = clean_schedule(
        frequency=frequency.value, weekly_day=weekly_day, send_hour=send_hour, timezone=timezone
    )
    clean_topics = clean_terms(topics)
    clean_exclude = clean_terms(exclude, "excluded term")
    subscriber = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None:
        subscriber = Subscriber(email=address, created_at=now)
    subscriber.topics = clean_topics
    subscriber.exclude = clean_exclude
    set_status(subscriber, status)
    for name, value in schedule.items():
        setattr(subscriber, name, value)
    if status == SubscriberStatus.ACTIVE:
        subscriber.confirmed_at = subscriber.confirmed_at or now
        subscriber.unsubscribed_at = None
    session.add(subscriber)
    session.commit()
    session.refresh(subscriber)
    event(log, "subscriber.added", subscriber=subscriber.id, status=subscriber.status)
    return subscriber


def remove_subscriber(*, session: Session, email: str) -> bool:
    """Delete a subscriber and their history; True if they existed."""
    subscriber = get_subscriber(session=session, email=email)
    if subscriber is None:
        return False
    # Children first, as explicit statements: the tables have no ORM relationships to order them.
    delivery_ids = select(Delivery.id).where(Delivery.subscriber_id == subscriber.id)
    session.execute(delete(DeliveryItem).where(col(DeliveryItem.delivery_id).in_(delivery_ids)))
    for table in (Bounce, SuppressionEvent):
        session.execute(delete(table).where(col(table.subscriber_id) == subscriber.id))
    session.execute(delete(Delivery).where(col(Delivery.subscriber_id) == subscriber.id))
    session.execute(delete(Feedback).where(col(Feedback.subscriber_id) == subscriber.id))
    session.delete(subscriber)
    session.commit()
    event(log, "subscriber.removed", subscriber=subscriber.id)
    return True


def list_subscribers(*, session: Session) -> list[Subscriber]:
    return list(session.exec(select(Subscriber).order_by(col(Subscriber.email))))


def set_status(subscriber: Subscriber, status: SubscriberStatus) -> None:
    """Change the status; a subscription that ends (unsubscribed) or starts again (active after
    anything else) gets a new link key, so no link made before acts on it, and any confirmation
    link still out stops working."""
    if subscriber.status == status.value:
        return
    if status in (SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED):
        subscriber.link_key = new_link_key()
        subscriber.confirm_key = None
    subscriber.status = status.value


def unsubscribe(
    *, session: Session, subscriber_id: int, now: dt.datetime, via: str = "link"
) -> Subscriber | None:
    """Unsubscribe (once); `via` (link, mail) says how the request came, for the log."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
        set_status(subscriber, SubscriberStatus.UNSUBSCRIBED)
        subscriber.unsubscribed_at = now
        session.add(subscriber)
        session.commit()
        event(log, "subscriber.unsubscribed", subscriber=subscriber_id, via=via)
    return subscriber


def _confirmation_envelope(settings: Settings, recipient: str, now: dt.datetime) -> Envelope:
    domain = settings.from_address.rsplit("@", 1)[-1]
    return Envelope(
        sender_name=settings.from_name,
        sender_address=settings.from_address,
        recipient=recipient,
        # 128 random bits, in the form of the digests' Message-IDs.
        message_id=f"<{os.urandom(16).hex()}.digest@{domain}>",
        now=now,
    )


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
    known = subscriber is not None
    # Only the latest request's link confirms: each request draws a new confirmation key.
    confirm_key = new_link_key()
    if subscriber is None:
        subscriber = Subscriber(
            email=address,
            created_at=now,
            topics=topics,
            exclude=exclude,
            confirm_key=confirm_key,
            **schedule,
        )
        session.add(subscriber)
        session.commit()
    else:
        # One write, as for an unknown address (same timing class). Its topics and schedule
        # change only once the new request is confirmed.
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == subscriber.id)
            .values(confirm_key=confirm_key)
        )
        session.commit()
    token = make_token(
        settings.secret_key,
        Purpose.CONFIRM,
        link_payload(subscriber, c=confirm_key, topics=topics, exclude=exclude, schedule=schedule),
    )
    message = render_confirmation(
        settings.templates_dir,
        envelope=_confirmation_envelope(settings, address, now),
        confirm_url=f"{settings.base_url}/confirm/{token}",
        from_name=settings.from_name,
        base_url=settings.base_url,
        valid_days=max(1, settings.confirm_max_age // 86400),
    )
    with mailer.connect() as connection:
        connection.send(message)
    event(log, "subscription.requested", subscriber=subscriber.id, known=known)


def confirmable(subscriber: Subscriber, payload: dict[str, Any]) -> bool:
    """Whether a confirmation link made for this subscription (links.made_for) may still
    confirm: only the latest request's, and only once. One mailed before confirmation keys
    carries none: it confirms a pending row from back then, once (that makes it active)."""
    key = payload.get("c")
    if key is None:
        return subscriber.confirm_key is None and subscriber.status == SubscriberStatus.PENDING
    return isinstance(key, str) and key == subscriber.confirm_key


def confirm_subscription(
    *, session: Session, subscriber: Subscriber, payload: dict[str, Any], now: dt.datetime
) -> bool:
    """Apply a confirmation link made for this subscription; False, changing nothing, when it
    was used already or a newer one was sent (confirmable)."""
    if not confirmable(subscriber, payload):
        return False
    # Claimed by one conditional write, so that two posts of one link at once confirm once.
    key = payload.get("c")
    claim = update(Subscriber).where(
        col(Subscriber.id) == subscriber.id, col(Subscriber.link_key) == subscriber.link_key
    )
    if key is None:
        claim = claim.where(
            col(Subscriber.confirm_key).is_(None),
            col(Subscriber.status) == SubscriberStatus.PENDING.value,
        )
    else:
        claim = claim.where(col(Subscriber.confirm_key) == key)
    claimed = cast(CursorResult[Any], session.execute(claim.values(confirm_key=None)))
    if claimed.rowcount != 1:
        session.rollback()
        return False
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
    set_status(subscriber, SubscriberStatus.ACTIVE)
    subscriber.confirm_key = None
    subscriber.confirmed_at = now
    subscriber.unsubscribed_at = None
    session.add(subscriber)
    session.commit()
    event(log, "subscription.confirmed", subscriber=subscriber.id)
    return True


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
    schedule = clean_schedule(
        frequency=frequency, weekly_day=weekly_day, send_hour=send_hour, timezone=timezone
    )
    if not 0 <= pause_days <= MAX_PAUSE_DAYS:
        raise UserError(f"Pause for 0 to {MAX_PAUSE_DAYS} days.")
    subscriber.topics = clean_topics
    subscriber.exclude = clean_exclude
    for name, value in schedule.items():
        setattr(subscriber, name, value)
    subscriber.paused_until = today + dt.timedelta(days=pause_days) if pause_days else None
    session.add(subscriber)
    session.commit()
    event(
        log,
        "subscriber.preferences_saved",
        subscriber=subscriber_id,
        topics=len(clean_topics),
        frequency=subscriber.frequency,
        paused_days=pause_days,
    )
    return subscriber


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
    event(log, "feedback.recorded", subscriber=subscriber_id, paper=paper_id, vote=vote)
    return True
