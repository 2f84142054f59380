"""What a send did and why: run summaries and records, deliveries by state, `digest why`."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from digest.config import Settings
from digest.delivery.planner import Plan, status_reason, window_of
from digest.errors import UserError
from digest.models import Delivery, DeliveryItem, DeliveryState, Paper, Run, Subscriber
from digest.runs import log_run_finished, log_run_started
from digest.schedule import latest_due, local_date, not_due_reason
from digest.subscribers import get_subscriber

log = logging.getLogger(__name__)


@dataclass
class SendSummary:
    digest_date: dt.date | None = None
    dry_run: bool = False
    sent: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Deliveries that failed temporarily and will be tried again at the given moment.
    retry: list[tuple[int, dt.datetime]] = field(default_factory=list)
    # Handed over, answer lost: maybe delivered (address, reason).
    unconfirmed: list[tuple[str, str]] = field(default_factory=list)
    # Claimed but not sent by this sender: its lease was lost (taken over, or not renewable).
    stopped: int = 0

    def merge(self, other: SendSummary) -> None:
        self.sent.extend(other.sent)
        self.skipped.extend(other.skipped)
        self.failed.extend(other.failed)
        self.retry.extend(other.retry)
        self.unconfirmed.extend(other.unconfirmed)
        self.stopped += other.stopped

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest_date": self.digest_date.isoformat() if self.digest_date else None,
            "dry_run": self.dry_run,
            "sent": len(self.sent),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "retrying": len(self.retry),
            "unconfirmed": len(self.unconfirmed),
            "stopped": self.stopped,
            "skipped_by_reason": count_reasons(self.skipped),
            "failed_by_reason": count_reasons(self.failed),
        }


def count_reasons(items: Iterable[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in items:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def record_plan(*, session: Session, plan: Plan, now: dt.datetime) -> Run:
    """A run record for a planner pass: how many were planned, and why the others were not."""
    run = Run(
        kind="plan",
        started_at=now,
        finished_at=now,
        status="ok",
        summary={
            "planned": len(plan.delivery_ids),
            # Of those, digests skipped for want of papers, looked at again: papers came since.
            "looked_at_again": len(plan.reopened),
            "dates": sorted(day.isoformat() for day in plan.dates),
            "not_planned_by_reason": count_reasons(plan.skipped),
        },
    )
    session.add(run)
    session.commit()
    log_run_finished(log, run)
    return run


def start_send_run(*, session: Session, now: dt.datetime) -> Run:
    run = Run(kind="send", started_at=now)
    session.add(run)
    session.commit()
    log_run_started(log, run)
    return run


def finish_send_run(*, session: Session, run: Run, summary: SendSummary, now: dt.datetime) -> None:
    run.finished_at = now
    run.status = (
        "ok" if not (summary.failed or summary.unconfirmed or summary.stopped) else "partial"
    )
    run.summary = summary.as_dict()
    session.add(run)
    session.commit()
    log_run_finished(log, run)


def record_batch(
    *, session: Session, summary: SendSummary, started: dt.datetime, finished: dt.datetime
) -> Run:
    """A worker's send batch, as a run `digest status` can sum: what it sent, skipped, failed,
    left unconfirmed or to another sender."""
    outcome = summary.as_dict()
    run = Run(
        kind="batch",
        started_at=started,
        finished_at=finished,
        status="ok"
        if not (summary.failed or summary.unconfirmed or summary.stopped)
        else "partial",
        summary={k: v for k, v in outcome.items() if k != "dry_run"},
    )
    session.add(run)
    session.commit()
    log_run_finished(log, run)
    return run


def record_task_failure(
    *, session: Session, task: str, error: BaseException | None, now: dt.datetime
) -> Run:
    """A worker task that failed for good (after its retries)."""
    text = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    run = Run(
        kind="task",
        started_at=now,
        finished_at=now,
        status="failed",
        summary={"task": task, "error": text.splitlines()[0][:500] if text else text},
    )
    session.add(run)
    session.commit()
    log_run_finished(log, run)
    return run


def record_stopped_run(
    session: Session, run: Run, summary: SendSummary, error: BaseException, now: dt.datetime
) -> None:
    """A send stopped (Ctrl-C) or broken part-way: the run says so, with what was done until
    then, instead of staying "running" for ever."""
    try:
        session.rollback()
        run.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        run.finished_at = now
        run.summary = {**summary.as_dict(), "error": f"{type(error).__name__}: {error}"}
        session.add(run)
        session.commit()
        log_run_finished(log, run)
    except Exception:  # the store itself is gone: the original error is what matters
        log.exception("could not record the end of send run %s", run.id)


def why(
    *,
    session: Session,
    settings: Settings,
    email: str,
    now: dt.datetime,
    digest_date: dt.date | None = None,
) -> list[str]:
    """What this subscriber got on a digest date, or why they got nothing, in plain lines."""
    subscriber = get_subscriber(session=session, email=email)
    if subscriber is None:
        raise UserError(f"No subscriber with address {email}.")
    day = digest_date or local_date(subscriber.timezone, now)
    lines = [
        f"{subscriber.email}: {subscriber.status}, {subscriber.frequency} at "
        f"{subscriber.send_hour:02d}:00 {subscriber.timezone}; topics: "
        f"{', '.join(subscriber.topics) or '(none)'}"
    ]
    if subscriber.exclude:
        lines.append(f"excluded terms: {', '.join(subscriber.exclude)}")
    delivery = session.execute(
        select(Delivery).where(
            col(Delivery.subscriber_id) == subscriber.id, col(Delivery.digest_date) == day
        )
    ).scalar_one_or_none()
    if delivery is None:
        reason = _not_planned_reason(subscriber, settings, day, now)
        lines.append(f"{day.isoformat()}: nothing sent: {reason}")
        return lines
    lines.append(describe_delivery(delivery))
    items = session.execute(
        select(DeliveryItem, col(Paper.title))
        .join(Paper, col(Paper.id) == col(DeliveryItem.paper_id))
        .where(col(DeliveryItem.delivery_id) == delivery.id)
        .order_by(col(DeliveryItem.rank))
    ).all()
    for item, title in items:
        lines.append(f"  {item.rank:2d}. {title} — {item.why}")
    return lines


def _not_planned_reason(
    subscriber: Subscriber, settings: Settings, day: dt.date, now: dt.datetime
) -> str:
    reason = status_reason(subscriber) or not_due_reason(window_of(subscriber), day)
    if reason is None:
        _, reason = latest_due(
            window_of(subscriber), now, dt.timedelta(hours=settings.catchup_hours)
        )
    return reason or (
        f"due, not planned yet (the planner runs every {settings.plan_every_minutes} minutes)"
    )


def describe_delivery(delivery: Delivery) -> str:
    head = f"{delivery.digest_date.isoformat()}: {delivery.state}"
    if delivery.state == DeliveryState.SENT and delivery.sent_at:
        head += f" at {delivery.sent_at.strftime('%H:%M:%S UTC')}"
    if delivery.reason:
        head += f": {delivery.reason}"
    if delivery.attempts > 1:
        head += f" ({delivery.attempts} attempts)"
    if delivery.retry_at:
        head += f"; next attempt {delivery.retry_at.strftime('%Y-%m-%d %H:%M UTC')}"
    if delivery.state == DeliveryState.SENDING and delivery.lease_until:
        head += (
            f"; held by {delivery.claimed_by or 'a sender'} until "
            f"{delivery.lease_until.strftime('%H:%M:%S UTC')} (then free for another sender)"
        )
    if delivery.state == DeliveryState.PLANNED:
        head += (
            f"; planned at {delivery.updated_at.strftime('%H:%M:%S UTC')}, waiting for a "
            "worker (the sweeper queues it again if no queued task carries it)"
        )
    if delivery.state == DeliveryState.UNCONFIRMED:
        head += "; not sent again unless released: digest deliveries release"
    return head


def delivery_counts(*, session: Session, days: int = 3) -> dict[dt.date, dict[str, int]]:
    """Deliveries by state for the most recent digest dates, newest first."""
    recent = (
        select(col(Delivery.digest_date))
        .distinct()
        .order_by(col(Delivery.digest_date).desc())
        .limit(days)
    )
    dates = [row[0] for row in session.execute(recent)]
    counts: dict[dt.date, dict[str, int]] = {day: {} for day in dates}
    if dates:
        rows = session.execute(
            select(col(Delivery.digest_date), col(Delivery.state), func.count())
            .where(col(Delivery.digest_date).in_(dates))
            .group_by(col(Delivery.digest_date), col(Delivery.state))
        )
        for day, state, n in rows:
            counts[day][state] = n
    return counts
