"""Outgoing messages -> the mailer -> each outcome recorded right after the server answered:
sent, failed for good (counted towards suppressing the address), or failed for now and tried
again later with backoff."""

from __future__ import annotations

from collections import deque

from sqlalchemy import select, update
from sqlalchemy.engine import Connection as DBConnection
from sqlmodel import col

from digest.delivery.compose import Outgoing
from digest.delivery.context import SendContext
from digest.delivery.state import backoff, next_attempt
from digest.delivery.store import OutcomeWriter
from digest.mailer import Connection, DeliveryError
from digest.models import DeliveryState, Subscriber, SubscriberStatus
from digest.render import Mail


def transmit(*, outgoing: list[Outgoing], writer: OutcomeWriter, run: SendContext) -> None:
    """Send each message over one mailer connection and record its outcome at once."""
    pending = deque(outgoing)
    try:
        with run.mailer.connect() as connection:
            while pending:
                item = pending.popleft()
                error = send_with_retries(connection, item.message, run)
                if error is None:
                    record_sent(writer, item, run)
                else:
                    record_failure(writer, item, error, run)
                run.advance()
    except DeliveryError as exc:
        # The server could not be reached at all (or went away for good): the rest fail for
        # now and are retried later, nothing is lost.
        for item in pending:
            record_failure(writer, item, exc, run)
            run.advance()


def send_with_retries(
    connection: Connection, message: Mail, run: SendContext
) -> DeliveryError | None:
    """Send one message; temporary failures are tried again a few times with backoff."""
    settings = run.settings
    last: DeliveryError | None = None
    for attempt in range(1, settings.smtp_attempts + 1):
        try:
            connection.send(message)
            return None
        except DeliveryError as exc:
            if exc.permanent:
                return exc
            last = exc
            if attempt < settings.smtp_attempts:
                run.sleep(backoff(attempt, settings.smtp_retry_base_seconds, cap=30.0))
    return last


def record_sent(writer: OutcomeWriter, item: Outgoing, run: SendContext) -> None:
    writer.mark_sent(item.delivery_id, run.moment())
    run.summary.sent.append((item.subscriber.email, len(item.picks)))
    if item.subscriber.bounce_count:
        # Delivered: a run of permanent failures is over.
        writer.db.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == item.subscriber.id)
            .values(bounce_count=0)
        )
        writer.db.commit()


def record_failure(
    writer: OutcomeWriter, item: Outgoing, error: DeliveryError, run: SendContext
) -> None:
    """A permanent failure is final and counts towards suppressing the address; a temporary
    one is tried again later, until the retry deadline."""
    now = run.moment()
    reason = str(error)
    retry_at = None
    if error.permanent:
        reason += _count_permanent_failure(writer.db, item.subscriber, run)
    else:
        retry_at = next_attempt(
            attempts=item.attempts, created_at=item.created_at, now=now, settings=run.settings
        )
        if retry_at is None:
            reason += f" (gave up after {item.attempts} attempts)"
    writer.set_state(item.delivery_id, DeliveryState.FAILED, now, reason=reason, retry_at=retry_at)
    run.summary.failed.append((item.subscriber.email, reason))
    if retry_at is not None:
        run.summary.retry.append((item.delivery_id, retry_at))


def _count_permanent_failure(db: DBConnection, subscriber: Subscriber, run: SendContext) -> str:
    """Count one more permanent failure for the address; suppress it after too many. Returns
    what to add to the delivery's reason."""
    db.execute(
        update(Subscriber)
        .where(col(Subscriber.id) == subscriber.id)
        .values(bounce_count=col(Subscriber.bounce_count) + 1)
    )
    db.commit()
    count = db.execute(
        select(col(Subscriber.bounce_count)).where(col(Subscriber.id) == subscriber.id)
    ).scalar_one()
    if count < run.settings.suppress_after_failures:
        return ""
    db.execute(
        update(Subscriber)
        .where(col(Subscriber.id) == subscriber.id)
        .values(status=SubscriberStatus.SUPPRESSED.value)
    )
    return f" (address suppressed after {count} permanent failures)"
