"""Suppressed addresses: hard bounces by mail counted towards suppression like SMTP 5xx answers
(`suppress_after_failures` in a row), and a suppression lifted by an operator, with the
history kept (`Bounce` rows, `SuppressionEvent` rows, the deliveries' reasons)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Session, col, select

from digest.config import Settings
from digest.errors import UserError
from digest.models import (
    Bounce,
    Delivery,
    DeliveryState,
    Subscriber,
    SubscriberStatus,
    SuppressionEvent,
)
from digest.subscribers import get_subscriber

log = logging.getLogger(__name__)

SUPPRESSED = "suppressed"
LIFTED = "lifted"


# A delivery's reason after an SMTP 5xx answer (digest.mailer's DeliveryError text).
SMTP_PERMANENT = "SMTP 5"


def count_hard_bounce(
    *,
    session: Session,
    settings: Settings,
    subscriber_id: int,
    digest_date: dt.date,
    now: dt.datetime,
) -> str:
    """Count a hard bounce of the subscriber's digest of `digest_date`; suppress the address
    once `suppress_after_failures` permanent failures came in a row. Returns what to add to
    the delivery's reason. Written in the session's transaction; the caller commits.

    "In a row" is read from the digests just before this one, newest first: a hard bounce or
    an SMTP 5xx answer extends the run; a digest delivered (sent, no bounce) or a soft bounce
    (the mailbox exists) ends it; a temporary failure neither. The subscriber's
    `bounce_count`, which SMTP-time failures count and every accepted digest starts again
    from zero, cannot tell: behind a relay every digest is accepted, and bounces come later,
    often after the next digest went out.
    """
    earlier = session.execute(
        select(col(Delivery.state), col(Delivery.reason), col(Bounce.hard))
        .outerjoin(Bounce, col(Bounce.delivery_id) == col(Delivery.id))
        .where(
            col(Delivery.subscriber_id) == subscriber_id,
            col(Delivery.digest_date) < digest_date,
            col(Delivery.state).in_([DeliveryState.SENT.value, DeliveryState.FAILED.value]),
        )
        .order_by(col(Delivery.digest_date).desc())
        .limit(4 * settings.suppress_after_failures)
    )
    run = 1
    for state, reason, hard in earlier:
        if run >= settings.suppress_after_failures:
            break
        smtp_permanent = hard is None and (reason or "").startswith(SMTP_PERMANENT)
        if hard or (state == DeliveryState.FAILED and smtp_permanent):
            run += 1
        elif hard is not None or state == DeliveryState.SENT:
            break
    bounce_count, status = session.execute(
        select(col(Subscriber.bounce_count), col(Subscriber.status)).where(
            col(Subscriber.id) == subscriber_id
        )
    ).one()
    values: dict[str, object] = {"bounce_count": max(bounce_count, run)}
    suppress = run >= settings.suppress_after_failures and status == SubscriberStatus.ACTIVE
    if suppress:
        values["status"] = SubscriberStatus.SUPPRESSED.value
        session.add(
            SuppressionEvent(
                subscriber_id=subscriber_id,
                action=SUPPRESSED,
                failures=run,
                reason=f"{run} permanent failures in a row, the last a bounce by mail",
                at=now,
            )
        )
        log.info("address suppressed subscriber=%d failures=%d", subscriber_id, run)
    session.execute(update(Subscriber).where(col(Subscriber.id) == subscriber_id).values(values))
    return f" (address suppressed after {run} permanent failures)" if suppress else ""


@dataclass(frozen=True)
class Lifted:
    """A suppression lifted: the failures counted until then, and the history that stays."""

    email: str
    failures: int
    bounces: int
    last_bounce: str | None


def lift_suppression(*, session: Session, email: str, now: dt.datetime) -> Lifted:
    """Make a suppressed address active again with a fresh failure count, and record that it
    was lifted (and with how many failures); its bounces and deliveries stay. A UserError
    when the address is unknown or not suppressed."""
    subscriber = get_subscriber(session=session, email=email)
    if subscriber is None or subscriber.id is None:
        raise UserError(f"No subscriber with address {email}.")
    if subscriber.status != SubscriberStatus.SUPPRESSED:
        raise UserError(f"{subscriber.email} is not suppressed (it is {subscriber.status}).")
    failures = subscriber.bounce_count
    session.add(
        SuppressionEvent(
            subscriber_id=subscriber.id,
            action=LIFTED,
            failures=failures,
            reason="lifted by an operator (digest subscribers unsuppress)",
            at=now,
        )
    )
    subscriber.status = SubscriberStatus.ACTIVE.value
    subscriber.bounce_count = 0
    session.add(subscriber)
    session.commit()
    bounces = session.exec(
        select(Bounce)
        .where(col(Bounce.subscriber_id) == subscriber.id)
        .order_by(col(Bounce.received_at).desc(), col(Bounce.id).desc())
    ).all()
    log.info("suppression lifted subscriber=%d failures=%d", subscriber.id, failures)
    return Lifted(
        email=subscriber.email,
        failures=failures,
        bounces=len(bounces),
        last_bounce=bounces[0].reason if bounces else None,
    )
