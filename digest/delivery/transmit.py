"""Outgoing messages -> the mailer -> each outcome recorded right after the server answered:
sent, failed for good (counted towards suppressing the address), failed for now and tried
again later with backoff, or unconfirmed (the answer was lost after the whole message went
out: never sent again blindly).

Before each message the sender checks that the row is still its own under a lease that covers
the message (digest.delivery.lease); every outcome names the claim's token, so a sender that
lost its rows changes nothing and sends nothing more of them.
"""

from __future__ import annotations

import logging
from collections import deque

from sqlalchemy import select, update
from sqlmodel import col

from digest.delivery.compose import Outgoing
from digest.delivery.context import SendContext
from digest.delivery.lease import LeaseKeeper
from digest.delivery.outcomes import OutcomeWriter
from digest.delivery.state import backoff, next_attempt
from digest.mailer import Connection, DeliveryError
from digest.models import DeliveryState, Subscriber, SubscriberStatus
from digest.render import Mail

log = logging.getLogger(__name__)


def transmit(
    *, outgoing: list[Outgoing], writer: OutcomeWriter, lease: LeaseKeeper, run: SendContext
) -> None:
    """Send each message over one mailer connection and record its outcome at once."""
    pending = deque(outgoing)
    try:
        with run.mailer.connect() as connection:
            while pending:
                item = pending.popleft()
                if not lease.may_send(item.delivery_id):
                    _taken_over(item, pending, lease, run)
                    return
                error = send_with_retries(connection, item.message, run)
                lease.done(item.delivery_id)
                if error is None:
                    record_sent(writer, item, run)
                elif error.unconfirmed:
                    record_unconfirmed(writer, item, error, run)
                else:
                    record_failure(writer, item, error, run)
                    if error.unreachable:
                        raise error
                run.advance()
    except DeliveryError as exc:
        # The mailer cannot take messages now (the server cannot be reached, the outbox cannot
        # be written): the rest fail for now and are retried later, nothing is lost.
        log.warning("batch_mailer_unavailable pending=%d error=%s", len(pending), exc)
        for item in pending:
            lease.done(item.delivery_id)
            record_failure(writer, item, exc, run)
            run.advance()


def _taken_over(
    item: Outgoing, pending: deque[Outgoing], lease: LeaseKeeper, run: SendContext
) -> None:
    """This sender lost its rows (its lease ran out, another took them over) or cannot keep
    its lease (the database is away): it sends nothing more of this batch. Rows still its own
    come free when the lease ends, and the sweeper queues them again."""
    rest = [item, *pending]
    lost = sum(1 for i in rest if i.delivery_id in lease.lost)
    log.warning(
        "batch_stopped claim=%s unsent=%d taken_over=%d (lease lost or not renewable)",
        lease.token[:8],
        len(rest),
        lost,
    )
    run.summary.stopped += len(rest)
    run.advance(len(rest))


def send_with_retries(
    connection: Connection, message: Mail, run: SendContext
) -> DeliveryError | None:
    """Send one message; temporary failures are tried again a few times with backoff. An
    unconfirmed hand-over, an unreachable mailer and a permanent refusal are not retried."""
    settings = run.settings
    last: DeliveryError | None = None
    for attempt in range(1, settings.smtp_attempts + 1):
        try:
            connection.send(message)
            return None
        except DeliveryError as exc:
            if exc.permanent or exc.unconfirmed or exc.unreachable:
                return exc
            last = exc
            if attempt < settings.smtp_attempts:
                run.sleep(backoff(attempt, settings.smtp_retry_base_seconds, cap=30.0))
    return last


def record_sent(writer: OutcomeWriter, item: Outgoing, run: SendContext) -> None:
    if not writer.mark_sent(item.delivery_id, run.moment()):
        # Handed over, but the row was taken over meanwhile: say so, never silently.
        log.error(
            "sent_after_takeover delivery=%d claim=%s", item.delivery_id, writer.claim.token[:8]
        )
    run.summary.sent.append((item.subscriber.email, len(item.picks)))
    if item.subscriber.bounce_count:
        # Delivered: a run of permanent failures is over.
        writer.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == item.subscriber.id)
            .values(bounce_count=0)
        )


def record_unconfirmed(
    writer: OutcomeWriter, item: Outgoing, error: DeliveryError, run: SendContext
) -> None:
    """The message may have been delivered: held (not sent again) unless the settings say to
    retry it like a temporary failure."""
    now = run.moment()
    reason = f"{error} ({now:%Y-%m-%d %H:%M:%S} UTC)"
    if run.settings.unconfirmed == "resend":
        retry_at = next_attempt(
            attempts=item.attempts, created_at=item.created_at, now=now, settings=run.settings
        )
        writer.set_state(
            item.delivery_id, DeliveryState.FAILED, now, reason=reason, retry_at=retry_at
        )
        if retry_at is not None:
            run.summary.retry.append((item.delivery_id, retry_at))
    else:
        writer.set_state(item.delivery_id, DeliveryState.UNCONFIRMED, now, reason=reason)
    run.summary.unconfirmed.append((item.subscriber.email, reason))


def record_failure(
    writer: OutcomeWriter, item: Outgoing, error: DeliveryError, run: SendContext
) -> None:
    """A permanent failure is final and counts towards suppressing the address; a temporary
    one is tried again later, until the retry deadline."""
    now = run.moment()
    reason = str(error)
    retry_at = None
    if error.permanent and not error.unreachable:
        reason += _count_permanent_failure(writer, item.subscriber, run)
    elif not error.permanent:
        retry_at = next_attempt(
            attempts=item.attempts, created_at=item.created_at, now=now, settings=run.settings
        )
        if retry_at is None:
            reason += f" (gave up after {item.attempts} attempts)"
    writer.set_state(item.delivery_id, DeliveryState.FAILED, now, reason=reason, retry_at=retry_at)
    run.summary.failed.append((item.subscriber.email, reason))
    if retry_at is not None:
        run.summary.retry.append((item.delivery_id, retry_at))


def _count_permanent_failure(
    writer: OutcomeWriter, subscriber: Subscriber, run: SendContext
) -> str:
    """Count one more permanent failure for the address; suppress it after too many. Returns
    what to add to the delivery's reason."""
    writer.execute(
        update(Subscriber)
        .where(col(Subscriber.id) == subscriber.id)
        .values(bounce_count=col(Subscriber.bounce_count) + 1)
    )
    count = writer.execute(
        select(col(Subscriber.bounce_count)).where(col(Subscriber.id) == subscriber.id)
    ).scalar_one()
    if count < run.settings.suppress_after_failures:
        return ""
    writer.execute(
        update(Subscriber)
        .where(col(Subscriber.id) == subscriber.id)
        .values(status=SubscriberStatus.SUPPRESSED.value)
    )
    return f" (address suppressed after {count} permanent failures)"
