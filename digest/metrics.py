"""Prometheus metrics counted from the store at scrape time, so that every process that serves
them (today the web app's /metrics) reports the same numbers: deliveries by state and digest
date, SMTP outcomes, subscribers by status and suppressed addresses, the last ingest per source,
the last run of each kind, stored papers."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from digest.logs import event
from digest.models import Delivery, DeliveryState, Paper, Run, Subscriber, SubscriberStatus

log = logging.getLogger(__name__)

# The digest dates reported (the newest ones in the store): today's, and the days before it
# whose retries may still be running.
RECENT_DATES = 3
# A failed delivery's reason starts with the server's reply ("SMTP 550 5.1.1 ...", written by
# digest.mailer.smtp) or says the connection failed ("SMTP connection lost: ..."); a bounce
# by mail, with what its report said ("bounced: 550 5.1.1 ...", "bounced (soft): ...",
# digest.bounces.process).
SMTP_REPLY = re.compile(r"^SMTP ([2-5]\d\d)\b")
BOUNCE_REPLY = re.compile(r"\b([245]\d\d)\b")
REASON_PREFIX_CHARS = 40
OK_INGEST = ("ok", "partial")


class SmtpOutcome(NamedTuple):
    # accepted, permanent, temporary, unconfirmed (no answer after the whole message went
    # out), bounced and bounced_soft (accepted, then refused by mail), other
    outcome: str
    code: str  # the reply code, "connection", or "" when none applies


def smtp_outcome(state: str, reason: str | None) -> SmtpOutcome | None:
    """What the SMTP server answered a delivery, read from its state and reason; None for a
    delivery that never reached a server (planned, sending, skipped)."""
    if state == DeliveryState.SENT:
        return SmtpOutcome("accepted", "")
    if state == DeliveryState.UNCONFIRMED:
        return SmtpOutcome("unconfirmed", "")
    if state != DeliveryState.FAILED:
        return None
    text = reason or ""
    if text.startswith("bounced"):
        reply = BOUNCE_REPLY.search(text.partition(":")[2])
        soft = text.startswith("bounced (soft)")
        return SmtpOutcome("bounced_soft" if soft else "bounced", reply.group(1) if reply else "")
    match = SMTP_REPLY.match(text)
    if match:
        code = match.group(1)
        return SmtpOutcome("permanent" if code.startswith("5") else "temporary", code)
    if text.startswith("SMTP connection"):
        return SmtpOutcome("temporary", "connection")
    return SmtpOutcome("other", "")


class StoreCollector(Collector):
    """Queries the store on each scrape (a few grouped counts, indexed): nothing is counted
    in the process, so a restart, or another process, loses or doubles nothing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("digest_store_up", "1 when the store answered this scrape.")
        try:
            with Session(self.engine) as session:
                families = [
                    *self._deliveries(session),
                    *self._subscribers(session),
                    *self._ingest(session),
                    self._runs(session),
                    self._papers(session),
                ]
        except SQLAlchemyError as exc:
            event(log, "metrics.store_failed", level=logging.WARNING, error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _deliveries(self, session: Session) -> list[Metric]:
        recent = (
            select(col(Delivery.digest_date))
            .distinct()
            .order_by(col(Delivery.digest_date).desc())
            .limit(RECENT_DATES)
        )
        dates = [row[0] for row in session.execute(recent)]
        by_state = GaugeMetricFamily(
            "digest_deliveries",
            f"Deliveries by state, for the {RECENT_DATES} newest digest dates.",
            labels=["digest_date", "state"],
        )
        outcomes = GaugeMetricFamily(
            "digest_smtp_outcomes",
            "Deliveries by the SMTP server's last answer (accepted; refused for good or for "
            "now, with the reply code; connection failures), for the newest digest dates.",
            labels=["digest_date", "outcome", "code"],
        )
        states: dict[tuple[str, str], int] = {}
        answers: dict[tuple[str, str, str], int] = {}
        for day in dates:
            for state in DeliveryState:
                states[(day.isoformat(), state.value)] = 0
            answers[(day.isoformat(), "accepted", "")] = 0
        if dates:
            reason = func.substr(col(Delivery.reason), 1, REASON_PREFIX_CHARS)
            rows = session.execute(
                select(col(Delivery.digest_date), col(Delivery.state), reason, func.count())
                .where(col(Delivery.digest_date).in_(dates))
                .group_by(col(Delivery.digest_date), col(Delivery.state), reason)
            )
            for day, state, prefix, count in rows:
                key = (day.isoformat(), str(state))
                states[key] = states.get(key, 0) + count
                outcome = smtp_outcome(str(state), prefix)
                if outcome is not None:
                    label = (day.isoformat(), outcome.outcome, outcome.code)
                    answers[label] = answers.get(label, 0) + count
        for labels, value in sorted(states.items()):
            by_state.add_metric(list(labels), value)
        for answer, value in sorted(answers.items()):
            outcomes.add_metric(list(answer), value)
        return [by_state, outcomes]

    def _subscribers(self, session: Session) -> list[Metric]:
        counts = {status.value: 0 for status in SubscriberStatus}
        rows = session.execute(
            select(col(Subscriber.status), func.count()).group_by(col(Subscriber.status))
        )
        for status, count in rows:
            counts[str(status)] = count
        by_status = GaugeMetricFamily(
            "digest_subscribers", "Subscribers by status.", labels=["status"]
        )
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        suppressed = GaugeMetricFamily(
            "digest_suppressed_addresses",
            "Addresses no digest goes to after repeated permanent delivery failures.",
        )
        suppressed.add_metric([], counts[SubscriberStatus.SUPPRESSED.value])
        return [by_status, suppressed]

    def _ingest(self, session: Session) -> list[Metric]:
        source = col(Run.summary)["source"].as_string()
        ingest = col(Run.kind) == "ingest"
        latest = select(source, func.max(col(Run.id))).where(ingest).group_by(source)
        succeeded = (
            select(source, func.max(col(Run.id)))
            .where(ingest, col(Run.status).in_(OK_INGEST))
            .group_by(source)
        )
        latest_ids = {name: run_id for name, run_id in session.execute(latest) if name}
        success_ids = {name: run_id for name, run_id in session.execute(succeeded) if name}
        wanted = set(latest_ids.values()) | set(success_ids.values())
        runs = {
            run.id: run
            for run in session.execute(select(Run).where(col(Run.id).in_(wanted))).scalars()
        }
        finished = GaugeMetricFamily(
            "digest_ingest_last_run_timestamp_seconds",
            "When the latest ingest run of each source started (Unix time).",
            labels=["source"],
        )
        failed = GaugeMetricFamily(
            "digest_ingest_last_run_failed",
            "1 when the latest ingest run of the source failed entirely.",
            labels=["source"],
        )
        new = GaugeMetricFamily(
            "digest_ingest_last_run_new_papers",
            "New papers the latest ingest run of each source stored.",
            labels=["source"],
        )
        success = GaugeMetricFamily(
            "digest_ingest_last_success_timestamp_seconds",
            "When the latest ingest run of each source that stored what it read finished.",
            labels=["source"],
        )
        for name, run_id in sorted(latest_ids.items()):
            run = runs[run_id]
            finished.add_metric([name], run.started_at.timestamp())
            failed.add_metric([name], 1 if run.status == "failed" else 0)
            new.add_metric([name], int(run.summary.get("new") or 0))
        for name, run_id in sorted(success_ids.items()):
            run = runs[run_id]
            moment = run.finished_at or run.started_at
            success.add_metric([name], moment.timestamp())
        return [finished, failed, new, success]

    def _runs(self, session: Session) -> Metric:
        family = GaugeMetricFamily(
            "digest_last_run_timestamp_seconds",
            "When the latest run of each kind (ingest, plan, send) started (Unix time).",
            labels=["kind"],
        )
        rows = session.execute(
            select(col(Run.kind), func.max(col(Run.started_at))).group_by(col(Run.kind))
        )
        for kind, started in sorted(rows, key=lambda row: str(row[0])):
            if started is not None:
                family.add_metric([str(kind)], _timestamp(started))
        return family

    def _papers(self, session: Session) -> Metric:
        family = GaugeMetricFamily("digest_papers_stored", "Papers in the store.")
        family.add_metric([], session.execute(select(func.count()).select_from(Paper)).scalar_one())
        return family


def _timestamp(value: object) -> float:
    """A max() over a UTC column comes back without the column's type on SQLite (a string or
    a naive datetime): read it as UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def store_registry(engine: Engine) -> CollectorRegistry:
    """A registry holding only the store's metrics (no per-process ones, which would differ
    between the processes behind one address)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(engine))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)
