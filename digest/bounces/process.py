"""Bounces read from a mailbox, each tied to the delivery it reports on, which is then marked
failed with the bounce's reason; hard bounces count towards suppressing the address.

A bounce is tied by the token of its bounce address first (signed: it names the delivery
whatever address the report gives, forwarding included), else by the failed address: that
subscriber's digest of the returned X-Digest-Date, or their latest one sent within
`bounce_match_days`. A sent delivery is marked failed, and so is an unconfirmed one (the
bounce shows it went out: it must not go out again). Each message is handled on its own (a
malformed one is reported and skipped, never stops the run) in one transaction, and remembered
(`InboundMessage`), so that reading the same mailbox again changes nothing; a delivery is
marked bounced once, whatever number of reports come back for it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.bounces.detect import Failure, Findings, read_bounce
from digest.config import Settings
from digest.delivery.state import MARK_BOUNCED
from digest.inbound import error_text
from digest.models import (
    Bounce,
    Delivery,
    DeliveryState,
    InboundMessage,
    Subscriber,
)
from digest.suppression import count_hard_bounce
from digest.tokens import InvalidToken, read_bounce_token

log = logging.getLogger(__name__)

HARD = "hard bounce"
SOFT = "soft bounce"
ALREADY = "already recorded"
UNMATCHED = "not matched"
DELAYED = "delayed"
NOT_A_BOUNCE = "not a bounce"
SKIPPED = "skipped"
SEEN_BEFORE = "seen before"
RESULTS = (HARD, SOFT, ALREADY, UNMATCHED, DELAYED, NOT_A_BOUNCE, SKIPPED, SEEN_BEFORE)


@dataclass
class Outcome:
    """What became of one failed recipient of a bounce (or of the whole message, when it
    names none)."""

    key: str  # where the message is in the mailbox
    result: str
    reason: str = ""
    address: str | None = None
    delivery_id: int | None = None
    tied_by: str | None = None  # "token" or "address"


@dataclass
class BounceRun:
    messages: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)


def process_bounces(
    *,
    session: Session,
    settings: Settings,
    messages: Iterator[tuple[str, bytes | Message | Exception]],
    now: dt.datetime,
    progress: Callable[[int], None] | None = None,
) -> BounceRun:
    """Read each bounce, tie it to its delivery and record it (see the module's docstring)."""
    run = BounceRun()
    for key, raw in messages:
        run.messages += 1
        run.outcomes.extend(_process_one(session, settings, key, raw, now))
        if progress:
            progress(1)
    log.info(
        "bounces processed messages=%d %s",
        run.messages,
        " ".join(f"{r.replace(' ', '_')}={run.count(r)}" for r in RESULTS),
    )
    return run


def _process_one(
    session: Session,
    settings: Settings,
    key: str,
    raw: bytes | Message | Exception,
    now: dt.datetime,
) -> list[Outcome]:
    if isinstance(raw, Exception):
        return [Outcome(key, SKIPPED, f"message could not be read: {error_text(raw)}")]
    try:
        data = raw.as_bytes() if isinstance(raw, Message) else raw
        findings = read_bounce(data, local_part=settings.bounce_local_part)
    except Exception as exc:  # any hostile message is reported and skipped, never fatal
        return [Outcome(key, SKIPPED, f"malformed message: {error_text(exc)}")]
    seen = session.exec(
        select(InboundMessage).where(col(InboundMessage.fingerprint) == findings.fingerprint)
    ).first()
    if seen is not None:
        return [Outcome(key, SEEN_BEFORE, f"{seen.result} when first read")]
    try:
        outcomes = _act(session, settings, key, findings, now)
        session.add(
            InboundMessage(
                fingerprint=findings.fingerprint,
                result=f"bounce: {outcomes[0].result}",
                processed_at=now,
            )
        )
        session.commit()
    except IntegrityError:
        # Another run recorded this message or this delivery's bounce in the meantime.
        session.rollback()
        return [Outcome(key, SEEN_BEFORE, "recorded by another run at the same time")]
    return outcomes


def _act(
    session: Session, settings: Settings, key: str, findings: Findings, now: dt.datetime
) -> list[Outcome]:
    """The outcomes of one new bounce, written in the session's transaction."""
    if not findings.failures:
        if findings.delayed:
            reason = "delivery delayed, not failed (yet): nothing done"
            return [Outcome(key, DELAYED, reason, address=a) for a in findings.delayed]
        return [Outcome(key, NOT_A_BOUNCE, "no failed recipient found (an auto-reply?)")]
    delivery, token_note = _by_token(session, settings, findings.tokens)
    if delivery is not None:
        failure = _failure_for(session, delivery, findings.failures)
        return [_record(session, settings, key, delivery, failure, "token", now)]
    outcomes = []
    for failure in findings.failures:
        delivery, why = _by_address(session, settings, failure.address, findings, now)
        if delivery is None:
            reason = f"{token_note}; {why}" if token_note else why
            outcomes.append(Outcome(key, UNMATCHED, reason, address=failure.address))
        else:
            outcomes.append(_record(session, settings, key, delivery, failure, "address", now))
    return outcomes


def _by_token(
    session: Session, settings: Settings, tokens: list[str]
) -> tuple[Delivery | None, str]:
    """The delivery the first valid bounce token names, or None and why not."""
    note = ""
    for token in tokens:
        try:
            delivery_id = read_bounce_token(settings.secret_key, token)
        except InvalidToken:
            note = "bounce token not valid (forged, altered, or signed with another key)"
            continue
        delivery = session.get(Delivery, delivery_id, populate_existing=True)
        if delivery is not None:
            return delivery, ""
        note = "bounce token names no known delivery (subscriber removed?)"
    return None, note


def _failure_for(session: Session, delivery: Delivery, failures: list[Failure]) -> Failure:
    """The failure about the delivery's subscriber, else the first (a forwarded address)."""
    subscriber = session.get(Subscriber, delivery.subscriber_id)
    email = subscriber.email.lower() if subscriber is not None else None
    return next((f for f in failures if f.address == email), failures[0])


def _by_address(
    session: Session, settings: Settings, address: str, findings: Findings, now: dt.datetime
) -> tuple[Delivery | None, str]:
    """The subscriber's digest of the returned date, else their latest sent within
    `bounce_match_days`; or None and why not."""
    subscriber = session.exec(
        select(Subscriber).where(col(Subscriber.email) == address.lower())
    ).first()
    if subscriber is None:
        return None, "no bounce token, and no subscriber with this address"
    since = (now - dt.timedelta(days=settings.bounce_match_days)).date()
    query = (
        select(Delivery)
        .where(col(Delivery.subscriber_id) == subscriber.id, col(Delivery.digest_date) >= since)
        .execution_options(populate_existing=True)
    )
    if findings.digest_date is not None:
        delivery = session.exec(
            query.where(col(Delivery.digest_date) == findings.digest_date)
        ).first()
        if delivery is not None:
            return delivery, ""
    delivery = session.exec(
        query.where(col(Delivery.state) == DeliveryState.SENT.value).order_by(
            col(Delivery.sent_at).desc()
        )
    ).first()
    if delivery is None:
        return None, f"no digest sent to this address in the last {settings.bounce_match_days} days"
    return delivery, ""


def _record(
    session: Session,
    settings: Settings,
    key: str,
    delivery: Delivery,
    failure: Failure,
    tied_by: str,
    now: dt.datetime,
) -> Outcome:
    """Mark the delivery failed with the bounce's reason, count a hard bounce, keep the
    bounce; or say why nothing changed."""
    assert delivery.id is not None
    outcome = Outcome(key, ALREADY, "", failure.address, delivery.id, tied_by)
    reason = f"bounced{'' if failure.hard else ' (soft)'}: {failure.reason}"
    moved = session.execute(
        MARK_BOUNCED, {"delivery_id": delivery.id, "reason": reason, "now": now}
    ).first()
    if moved is None:
        return _unchanged(session, outcome, delivery)
    if failure.hard:
        suppressed = count_hard_bounce(
            session=session,
            settings=settings,
            subscriber_id=delivery.subscriber_id,
            digest_date=delivery.digest_date,
            now=now,
        )
        if suppressed:
            reason += suppressed
            session.execute(
                update(Delivery).where(col(Delivery.id) == delivery.id).values(reason=reason)
            )
    session.add(
        Bounce(
            delivery_id=delivery.id,
            subscriber_id=delivery.subscriber_id,
            address=failure.address[:320],
            hard=failure.hard,
            status=failure.status,
            reason=failure.reason[:500],
            tied_by=tied_by,
            received_at=now,
        )
    )
    log.info(
        "bounce recorded delivery=%d subscriber=%d hard=%s status=%s tied_by=%s",
        delivery.id,
        delivery.subscriber_id,
        failure.hard,
        failure.status,
        tied_by,
    )
    outcome.result = HARD if failure.hard else SOFT
    outcome.reason = reason
    return outcome


def _unchanged(session: Session, outcome: Outcome, delivery: Delivery) -> Outcome:
    """Why a bounce moved nothing: recorded before, failed for good already, or a delivery
    that is not out (planned, being sent, skipped)."""
    session.refresh(delivery)
    recorded = session.exec(select(Bounce.id).where(col(Bounce.delivery_id) == delivery.id))
    if recorded.first() is not None:
        outcome.reason = "this delivery's bounce was recorded already"
    elif delivery.state == DeliveryState.FAILED:
        outcome.reason = f"the delivery had failed already: {delivery.reason or ''}".strip()
    else:
        outcome.result = UNMATCHED
        outcome.reason = f"the delivery is {delivery.state}: nothing done"
    return outcome
