"""A delivery's states and the moves between them, defined once: which rows a sender may take
(claim), which a sweeper queues again (stuck), and what claiming, marking sent and setting any
other state write.

    planned -> sending -> sent | skipped | failed (retry_at: tried again from then on)
               ^ lease ran out (the worker died): another sender may take it over

Ownership (a claim token checked when marking a row sent or failed) belongs here too: the
claim statement and the outcome statements below are the only places a row's state changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col

from digest.config import Settings
from digest.models import Delivery, DeliveryState, UTCDateTime


def claimable(
    now: dt.datetime,
    *,
    planned_before: dt.datetime | None = None,
    retry_before: dt.datetime | None = None,
) -> ColumnElement[bool]:
    """The one condition for a delivery that a sender may take (again).

    Planned (and untouched since `planned_before`, when given: its task may still be queued),
    sending under a lease that ran out (its worker died), or failed temporarily and due for
    another attempt by `retry_before` (any time, when None).
    """
    planned = col(Delivery.state) == DeliveryState.PLANNED.value
    if planned_before is not None:
        planned = and_(planned, col(Delivery.updated_at) <= planned_before)
    retry = and_(
        col(Delivery.state) == DeliveryState.FAILED.value, col(Delivery.retry_at).is_not(None)
    )
    if retry_before is not None:
        retry = and_(retry, col(Delivery.retry_at) <= retry_before)
    return or_(
        planned,
        and_(col(Delivery.state) == DeliveryState.SENDING.value, col(Delivery.lease_until) < now),
        retry,
    )


def stuck(now: dt.datetime, settings: Settings) -> ColumnElement[bool]:
    """A delivery nobody is working on any more: planned long ago (a lost task), sending
    under an expired lease (a dead worker), failed and due for a retry (a lost retry)."""
    grace = now - dt.timedelta(seconds=settings.planned_grace_seconds)
    return claimable(now, planned_before=grace, retry_before=now)


def sendable_again(now: dt.datetime, settings: Settings) -> ColumnElement[bool]:
    """What an explicit send (`digest send`) sends again when it plans a date: what is stuck,
    and what waits for a retry, whenever that retry is due."""
    grace = now - dt.timedelta(seconds=settings.planned_grace_seconds)
    return claimable(now, planned_before=grace)


def claim_statement(
    ids: ColumnElement[bool], *, now: dt.datetime, settings: Settings, retry_now: bool
) -> Any:
    """Take the claimable deliveries among `ids`: sending, under a lease, one more attempt.

    An explicit send (`retry_now`) retries at once what is waiting for a retry."""
    retry_before = now + dt.timedelta(days=1) if retry_now else now
    return (
        update(Delivery)
        .where(ids)
        .where(claimable(now, retry_before=retry_before))
        .values(
            state=DeliveryState.SENDING.value,
            lease_until=now + dt.timedelta(seconds=settings.lease_seconds),
            attempts=col(Delivery.attempts) + 1,
            updated_at=now,
            retry_at=None,
        )
        .returning(col(Delivery.id))
    )


# Built once: executing the same statement object reuses SQLAlchemy's compiled form.
SET_STATE = (
    update(Delivery)
    .where(col(Delivery.id) == bindparam("delivery_id"))
    .values(
        state=bindparam("state"),
        reason=bindparam("reason"),
        updated_at=bindparam("now", type_=UTCDateTime()),
        lease_until=None,
        retry_at=bindparam("retry_at", type_=UTCDateTime()),
    )
)

# "Sent": the statement run right after the SMTP server accepted a message, 100,000 times a
# day. Parameters: `now` and `delivery_id`. The PostgreSQL store runs this same statement,
# compiled once, as a server-side prepared statement (digest.delivery.store).
MARK_SENT = (
    update(Delivery)
    .where(col(Delivery.id) == bindparam("delivery_id"))
    .values(
        state=DeliveryState.SENT.value,
        reason=None,
        updated_at=bindparam("now", type_=UTCDateTime()),
        lease_until=None,
        retry_at=None,
        sent_at=bindparam("now", type_=UTCDateTime()),
    )
)


def set_state(
    db: Session | DBConnection,
    delivery_id: int,
    state: DeliveryState,
    now: dt.datetime,
    *,
    reason: str | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    """Move a delivery to `state` (not "sent": see MARK_SENT) and commit; its lease ends."""
    if state == DeliveryState.SENT:
        db.execute(MARK_SENT, {"delivery_id": delivery_id, "now": now})
    else:
        db.execute(
            SET_STATE,
            {
                "delivery_id": delivery_id,
                "state": state.value,
                "reason": reason,
                "now": now,
                "retry_at": retry_at,
            },
        )
    db.commit()


def backoff(attempt: int, base: float, cap: float = 3600.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... at most `cap` seconds."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def next_attempt(
    *, attempts: int, created_at: dt.datetime, now: dt.datetime, settings: Settings
) -> dt.datetime | None:
    """When a temporarily failed delivery is tried again, or None: past its deadline."""
    deadline = created_at + dt.timedelta(hours=settings.retry_deadline_hours)
    retry_at = now + dt.timedelta(seconds=backoff(attempts, settings.retry_base_seconds))
    return None if retry_at > deadline else retry_at


def stuck_deliveries(*, session: Session, settings: Settings, now: dt.datetime) -> list[int]:
    """Deliveries to queue again (see `stuck`), oldest first; the planned ones are touched so
    that the next sweep does not queue them again at once."""
    # Only recent digests can be stuck: planned within the catch-up window, retried until the
    # deadline, in any time zone. The date index narrows the search to them.
    horizon = now - dt.timedelta(hours=settings.catchup_hours + settings.retry_deadline_hours + 48)
    statement = (
        select(col(Delivery.id))
        .where(col(Delivery.digest_date) >= horizon.date())
        .where(stuck(now, settings))
        .order_by(col(Delivery.id))
    )
    ids = [row[0] for row in session.execute(statement)]
    if ids:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), col(Delivery.state) == DeliveryState.PLANNED.value)
            .values(updated_at=now)
        )
        session.commit()
    return ids


# "Bounced": a digest the server accepted came back by mail (digest.bounces.process): failed
# for good, with the bounce's reason. Only a sent row moves (it returns its id):
# a second report of the same bounce, or one about a row in any other state, changes nothing.
MARK_BOUNCED = (
    update(Delivery)
    .where(
        col(Delivery.id) == bindparam("delivery_id"),
        col(Delivery.state) == DeliveryState.SENT.value,
    )
    .values(
        state=DeliveryState.FAILED.value,
        reason=bindparam("reason"),
        updated_at=bindparam("now", type_=UTCDateTime()),
        lease_until=None,
        retry_at=None,
    )
    .returning(col(Delivery.id))
)
