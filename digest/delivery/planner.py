"""Planning: who is due now, and a planned delivery row for each of them.

The delivery row (one per subscriber per digest date, unique) is the claim. The planner inserts
it as "planned" and hands over only the rows it inserted, so two planners never queue one
subscriber twice.

A digest skipped for want of papers ("no new paper above the relevance threshold", "no candidate
papers") is looked at again when papers were stored after it was skipped, as long as its date is
still due (within the catch-up window): the planner turns it back to planned, once per change of
the store, and hands it over like a new one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select, update
from sqlmodel import Session, col

from digest.config import Settings
from digest.db import one_of
from digest.delivery.state import sendable_again
from digest.delivery.store import DeliveryStore, delivery_store
from digest.digests import is_empty_reason
from digest.envelope import message_id_domain, new_message_ids
from digest.errors import UserError
from digest.models import Delivery, DeliveryState, Subscriber, SubscriberStatus
from digest.paperstore import papers_changed_at
from digest.schedule import SendWindow, latest_due, local_date, not_due_reason
from digest.subscribers import normalize_email

# A planner run that added this many deliveries refreshes the table's statistics (PostgreSQL),
# after its first pages and at its end: the senders' queries are planned with them, and
# statistics from before the day's rows existed made the database scan instead of look up.
ANALYZE_AFTER = 1000

_STATUS_REASONS = {
    SubscriberStatus.PENDING.value: "not confirmed yet",
    SubscriberStatus.UNSUBSCRIBED.value: "unsubscribed",
    SubscriberStatus.SUPPRESSED.value: "suppressed after repeated permanent delivery failures",
}


def status_reason(subscriber: Subscriber | str) -> str | None:
    """Why a subscriber in this status gets nothing, or None for an active one."""
    status = subscriber if isinstance(subscriber, str) else subscriber.status
    return _STATUS_REASONS.get(status)


def window_of(subscriber: Subscriber) -> SendWindow:
    return SendWindow(
        frequency=subscriber.frequency,
        weekly_day=subscriber.weekly_day,
        send_hour=subscriber.send_hour,
        timezone=subscriber.timezone,
        paused_until=subscriber.paused_until,
    )


@dataclass
class Plan:
    """Deliveries the planner created (to be sent) and why the other subscribers were left out."""

    delivery_ids: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dates: set[dt.date] = field(default_factory=set)
    # Deliveries of these dates that failed temporarily or are stuck (a stopped run's): sent
    # now by an explicit send (the Celery path leaves them to the sweeper).
    retry_ids: list[int] = field(default_factory=list)
    # Of `delivery_ids`, those skipped for want of papers and planned again: papers came since.
    reopened: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    """What one planner run was asked for; the same for each of its pages."""

    settings: Settings
    now: dt.datetime
    digest_date: dt.date | None
    email: str | None
    dry_run: bool
    # When a paper was last stored or changed: a digest skipped for want of papers before
    # then is looked at again.
    papers_changed_at: dt.datetime | None = None


# A candidate for a delivery: subscriber id, address, digest date.
_Candidate = tuple[int, str, dt.date]

_COLUMNS = (
    col(Subscriber.id),
    col(Subscriber.email),
    col(Subscriber.status),
    col(Subscriber.frequency),
    col(Subscriber.weekly_day),
    col(Subscriber.send_hour),
    col(Subscriber.timezone),
    col(Subscriber.paused_until),
)


def plan_deliveries(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    digest_date: dt.date | None = None,
    email: str | None = None,
    dry_run: bool = False,
    on_planned: Callable[[list[int]], None] | None = None,
    page_size: int = 5000,
) -> Plan:
    """Create a planned delivery for each subscriber whose digest is due and has none yet.

    Due means: their local send hour of the digest date has come (at most `catchup_hours` ago),
    it is their weekly day, and they are not paused. With `digest_date` the hour is ignored;
    with `email` only that subscriber is planned, for `digest_date` or their local today.
    Subscribers are planned a page at a time; `on_planned` gets each page's new delivery ids as
    soon as they are committed, so sending starts while the planner goes on.
    """
    request = _Request(
        settings, now, digest_date, email, dry_run, papers_changed_at(session=session)
    )
    store = delivery_store(session)
    plan = Plan()
    last_id = 0
    found = False
    while True:
        statement = (
            select(*_COLUMNS).where(col(Subscriber.id) > last_id).order_by(col(Subscriber.id))
        )
        if email is not None:
            statement = statement.where(col(Subscriber.email) == normalize_email(email))
        page = session.execute(statement.limit(page_size)).all()
        if not page:
            break
        found = True
        last_id = page[-1][0]
        new_ids = _plan_page(session, store, request, page, plan)
        if new_ids and on_planned is not None:
            on_planned(new_ids)
        planned_here = len(plan.delivery_ids)
        if planned_here >= ANALYZE_AFTER > planned_here - len(new_ids):
            store.refresh_statistics(session)
    if len(plan.delivery_ids) >= ANALYZE_AFTER:
        store.refresh_statistics(session)
    if email is not None and not found:
        raise UserError(f"No subscriber with address {email}.")
    return plan


def _plan_page(
    session: Session, store: DeliveryStore, request: _Request, rows: Sequence[Any], plan: Plan
) -> list[int]:
    candidates = _due(request, rows, plan)
    if not candidates:
        return []
    fresh, reopen = _without_deliveries(session, request, candidates, plan)
    plan.dates |= {day for _, _, day in fresh} | {day for _, _, day in reopen}
    if request.dry_run:
        # Subscriber ids in a dry run.
        plan.delivery_ids.extend([sid for sid, _, _ in fresh] + [sid for sid, _, _ in reopen])
        return []
    reopened = _reopen(session, request, [delivery_id for _, delivery_id, _ in reopen])
    plan.reopened.extend(reopened)
    plan.delivery_ids.extend(reopened)
    if not fresh:
        return reopened
    message_ids = new_message_ids(message_id_domain(request.settings), len(fresh))
    values = [
        (sid, day, message_id) for (sid, _, day), message_id in zip(fresh, message_ids, strict=True)
    ]
    new_ids = store.insert_planned(session, values, request.now)
    session.commit()
    if len(new_ids) < len(values):
        # Another planner inserted some of these at the same moment: they are its to send.
        plan.skipped.append(("(several)", "planned by another planner at the same time"))
    plan.delivery_ids.extend(new_ids)
    return reopened + new_ids


def _reopen(session: Session, request: _Request, delivery_ids: list[int]) -> list[int]:
    """Skipped for want of papers, and papers came since: planned again. The update names the
    state it leaves, so of two planners at the same moment only one hands each row over."""
    if not delivery_ids or request.papers_changed_at is None:
        return []
    reopened = session.execute(
        update(Delivery)
        .where(
            col(Delivery.id).in_(delivery_ids),
            and_(
                col(Delivery.state) == DeliveryState.SKIPPED.value,
                col(Delivery.updated_at) < request.papers_changed_at,
            ),
        )
        .values(state=DeliveryState.PLANNED.value, reason=None, updated_at=request.now)
        .returning(col(Delivery.id))
    )
    ids = [row[0] for row in reopened]
    session.commit()
    return ids


def _due(request: _Request, rows: Sequence[Any], plan: Plan) -> list[_Candidate]:
    """The subscribers of a page whose digest is due, with its date; the others go to
    `plan.skipped` with the reason."""
    catchup = dt.timedelta(hours=request.settings.catchup_hours)
    candidates: list[_Candidate] = []
    # Subscribers share send windows (zone, hour, frequency): each window is worked out once.
    due: dict[SendWindow, tuple[dt.date | None, str | None]] = {}
    for row in rows:
        sid, address, status = row[0], row[1], row[2]
        reason = status_reason(status)
        if reason is None:
            window = SendWindow(
                frequency=row[3],
                weekly_day=row[4],
                send_hour=row[5],
                timezone=row[6],
                paused_until=row[7],
            )
            if request.digest_date is not None:
                day: dt.date | None = request.digest_date
                reason = not_due_reason(window, request.digest_date)
            elif request.email is not None:
                day = local_date(window.timezone, request.now)
                reason = not_due_reason(window, day)
            else:
                if window not in due:
                    due[window] = latest_due(window, request.now, catchup)
                day, reason = due[window]
            if reason is None and day is not None:
                candidates.append((sid, address, day))
                continue
        plan.skipped.append((address, reason or "not due"))
    return candidates


def _without_deliveries(
    session: Session, request: _Request, candidates: list[_Candidate], plan: Plan
) -> tuple[list[_Candidate], list[tuple[int, int, dt.date]]]:
    """The candidates that have no delivery for their date yet, and (subscriber id, delivery
    id, date) of those whose digest was skipped for want of papers before papers came.

    The others who have one get nothing new, and are told why. Those whose delivery is stuck
    (see `state.stuck`: planned long ago by a run that stopped, or sending under an expired
    lease) or waiting for a retry are sent again by an explicit send (`plan.retry_ids`).
    """
    again_now = sendable_again(request.now, request.settings)
    existing: dict[tuple[int, dt.date], tuple[int, str, bool, bool]] = {}
    for day in {day for _, _, day in candidates}:
        ids = [sid for sid, _, d in candidates if d == day]
        found = session.execute(
            select(
                col(Delivery.subscriber_id),
                col(Delivery.id),
                col(Delivery.state),
                again_now,
                col(Delivery.reason),
                col(Delivery.updated_at),
            ).where(
                col(Delivery.digest_date) == day, one_of(session, col(Delivery.subscriber_id), ids)
            )
        )
        for sid, delivery_id, delivery_state, again, reason, updated_at in found:
            stale = (
                delivery_state == DeliveryState.SKIPPED.value
                and is_empty_reason(reason)
                and request.papers_changed_at is not None
                and updated_at < request.papers_changed_at
            )
            existing[(sid, day)] = (delivery_id, delivery_state, again, stale)
    fresh = []
    reopen = []
    for sid, address, day in candidates:
        match = existing.get((sid, day))
        if match is None:
            fresh.append((sid, address, day))
            continue
        delivery_id, delivery_state, again, stale = match
        if stale:
            reopen.append((sid, delivery_id, day))
        elif again:
            plan.retry_ids.append(delivery_id)
        else:
            plan.skipped.append((address, f"already {delivery_state} for {day.isoformat()}"))
    return fresh, reopen
