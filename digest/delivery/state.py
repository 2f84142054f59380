"""A delivery's states and the moves between them, defined once: which rows a sender may take
(claim), which a sweeper queues again (stuck), and what claiming, renewing, marking sent and
setting any other state write.

    planned -> sending -> sent | skipped | failed (retry_at: tried again from then on)
               |   ^ lease ran out (the worker died): another sender may take it over
               +-> unconfirmed (dropped after the whole message went out: held, or released)

Ownership: a claim writes a fresh token into its rows; renewing the lease and every outcome
statement name that token, so a sender whose lease ran out (and whose rows another sender took
over) changes nothing and learns that the rows are gone. The claim statement and the outcome
statements below are the only places a row's state changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
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
    ids: ColumnElement[bool],
    *,
    now: dt.datetime,
    settings: Settings,
    retry_now: bool,
    token: str,
    holder: str,
) -> Any:
    """Take the claimable deliveries among `ids`: sending, under a lease and this claim's
    token, one more attempt.

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
            claim_token=token,
            claimed_by=holder,
        )
        .returning(col(Delivery.id))
    )


def _owned() -> ColumnElement[bool]:
    """The row still belongs to the claim named by the `token` parameter."""
    return and_(
        col(Delivery.id) == bindparam("delivery_id"),
        col(Delivery.state) == DeliveryState.SENDING.value,
        col(Delivery.claim_token) == bindparam("token"),
    )


# A live sender's lease renewal: the rows of its claim that are still its own, under a new
# lease. Those missing from the answer were taken over (its lease had run out).
RENEW = (
    update(Delivery)
    .where(col(Delivery.claim_token) == bindparam("token"))
    .where(col(Delivery.state) == DeliveryState.SENDING.value)
    .values(lease_until=bindparam("until", type_=UTCDateTime()))
    .returning(col(Delivery.id))
)


# Built once: executing the same statement object reuses SQLAlchemy's compiled form. An
# outcome ends the lease and keeps the claim's token, which says which claim wrote it (an
# outcome write retried after a lost connection finds its own earlier commit by it).
_ENDED = {"lease_until": None}

# Any outcome but "sent", for a row this claim still owns (parameter `token`).
SET_STATE = (
    update(Delivery)
    .where(_owned())
    .values(
        state=bindparam("state"),
        reason=bindparam("reason"),
        updated_at=bindparam("now", type_=UTCDateTime()),
        retry_at=bindparam("retry_at", type_=UTCDateTime()),
        **_ENDED,
    )
)

# "Sent": the statement run right after the SMTP server accepted a message, 100,000 times a
# day. Parameters: `now`, `delivery_id` and `token`; it changes nothing (rowcount 0) when the
# row is no longer this claim's. The PostgreSQL store runs this same statement, compiled once,
# as a server-side prepared statement (digest.delivery.store).
MARK_SENT = (
    update(Delivery)
    .where(_owned())
    .values(
        state=DeliveryState.SENT.value,
        reason=None,
        updated_at=bindparam("now", type_=UTCDateTime()),
        retry_at=None,
        sent_at=bindparam("now", type_=UTCDateTime()),
        **_ENDED,
    )
)


def set_state(
    db: Session | DBConnection,
    delivery_id: int,
    state: DeliveryState,
    now: dt.datetime,
    *,
    token: str,
    reason: str | None = None,
    retry_at: dt.datetime | None = None,
) -> bool:
    """Move a delivery of the claim `token` to `state` and commit; its lease ends. False (and
    nothing changed) when the row is no longer this claim's."""
    if state == DeliveryState.SENT:
        result = db.execute(MARK_SENT, {"delivery_id": delivery_id, "now": now, "token": token})
    else:
        result = db.execute(
            SET_STATE,
            {
                "delivery_id": delivery_id,
                "token": token,
                "state": state.value,
                "reason": reason,
                "now": now,
                "retry_at": retry_at,
            },
        )
    db.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_claim(token: str) -> Any:
    """Give a claim's rows that are still `sending` back to `planned` (the batch broke before
    sending them), so that the sweeper or a retried task takes them at once."""
    return (
        update(Delivery)
        .where(col(Delivery.claim_token) == token)
        .where(col(Delivery.state) == DeliveryState.SENDING.value)
        .values(
            state=DeliveryState.PLANNED.value,
            lease_until=None,
            updated_at=bindparam("now", type_=UTCDateTime()),
        )
    )


def written_by(
    db: Session | DBConnection, delivery_id: int, state: DeliveryState, token: str
) -> bool:
    """Whether the row is in `state`, written by the claim `token`: an outcome write whose
    answer was lost with its connection may have committed before it was tried again."""
    row = db.execute(
        select(col(Delivery.state), col(Delivery.claim_token)).where(
            col(Delivery.id) == delivery_id
        )
    ).first()
    return row is not None and tuple(row) == (state.value, token)


def release_unconfirmed(
    session: Session, delivery_ids: list[int], now: dt.datetime, *, by: str
) -> list[int]:
    """An operator's decision on unconfirmed deliveries: send them again (now due for a
    retry). Returns the ids released; the caller commits."""
    if not delivery_ids:
        return []
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(delivery_ids))
        .where(col(Delivery.state) == DeliveryState.UNCONFIRMED.value)
        .values(
            state=DeliveryState.FAILED.value,
            retry_at=now,
            updated_at=now,
            reason=Delivery.reason + f" (released by {by})",  # type: ignore[operator]
        )
        .returning(col(Delivery.id))
    )
    return [row[0] for row in result]


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


def stuck_deliveries(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    queued: Collection[int] | None = None,
) -> list[int]:
    """Deliveries to queue again (see `stuck`), oldest first, except those a queued or running
    task carries (`queued`, read from the broker by the caller); the planned ones are touched
    so that the next sweep does not queue them again at once."""
    # Only recent digests can be stuck: planned within the catch-up window, retried until the
    # deadline, in any time zone. The date index narrows the search to them.
    horizon = now - dt.timedelta(hours=settings.catchup_hours + settings.retry_deadline_hours + 48)
    statement = (
        select(col(Delivery.id))
        .where(col(Delivery.digest_date) >= horizon.date())
        .where(stuck(now, settings))
        .order_by(col(Delivery.id))
    )
    carried = set(queued or ())
    ids = [row[0] for row in session.execute(statement) if row[0] not in carried]
    if ids:
        for start in range(0, len(ids), 5000):
            session.execute(
                update(Delivery)
                .where(
                    col(Delivery.id).in_(ids[start : start + 5000]),
                    col(Delivery.state) == DeliveryState.PLANNED.value,
                )
                .values(updated_at=now)
            )
        session.commit()
    return ids


# "Bounced": a digest that went out came back by mail (digest.bounces.process): failed for
# good, with the bounce's reason. A bounce settles what the sender could not know: an
# unconfirmed row (dropped after the whole message went out), or one released for another
# attempt, did reach a server, and must not go out again. Rows in any other state (a claim
# may hold them) do not move; the statement returns the id of a row it moved.
MARK_BOUNCED = (
    update(Delivery)
    .where(
        col(Delivery.id) == bindparam("delivery_id"),
        or_(
            col(Delivery.state).in_([DeliveryState.SENT.value, DeliveryState.UNCONFIRMED.value]),
            and_(
                col(Delivery.state) == DeliveryState.FAILED.value,
                col(Delivery.retry_at).is_not(None),
            ),
        ),
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
