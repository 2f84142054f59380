"""Delivery: plan who is due, claim, rank in batches, render, send exactly once, retry, sweep.

The delivery row (one per subscriber per digest date, unique) is the claim. The planner inserts
it as "planned" and queues only the rows it inserted, so two planners never queue one subscriber
twice. A sender moves rows to "sending" with a lease, records "sent" right after the SMTP server
accepted each message, and a sweeper queues again what a dead worker or a lost task left behind.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import gc
import hashlib
import logging
import mmap
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection as DBConnection
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from digest import ranking, services
from digest.config import Settings
from digest.db import one_of
from digest.mailer import Connection, DeliveryError, Mailer
from digest.models import (
    Delivery,
    DeliveryItem,
    DeliveryState,
    Paper,
    Run,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from digest.ranking import Pick, PreparedCorpus, RankPaper, prepare_corpus, rank_prepared
from digest.render import Envelope, Mail, render_digest
from digest.schedule import SendWindow, latest_due, local_date, not_due_reason

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# Summaries


@dataclass
class SendSummary:
    digest_date: dt.date | None = None
    dry_run: bool = False
    sent: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Deliveries that failed temporarily and will be tried again at the given moment.
    retry: list[tuple[int, dt.datetime]] = field(default_factory=list)

    def merge(self, other: SendSummary) -> None:
        self.sent.extend(other.sent)
        self.skipped.extend(other.skipped)
        self.failed.extend(other.failed)
        self.retry.extend(other.retry)

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest_date": self.digest_date.isoformat() if self.digest_date else None,
            "dry_run": self.dry_run,
            "sent": len(self.sent),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "retrying": len(self.retry),
            "skipped_by_reason": count_reasons(self.skipped),
            "failed_by_reason": count_reasons(self.failed),
        }


def count_reasons(items: Iterable[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in items:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


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


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class Plan:
    """Deliveries the planner created (to be sent) and why the other subscribers were left out."""

    delivery_ids: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dates: set[dt.date] = field(default_factory=set)
    # Deliveries of these dates that failed temporarily or are stuck (a stopped run's): sent
    # now by an explicit send (the Celery path leaves them to the sweeper).
    retry_ids: list[int] = field(default_factory=list)


# PostgreSQL: a page of planned deliveries as three arrays, the same for every page size. The
# multi-row VALUES form took 8 parameters a row, and the driver parsing that statement's text
# (tens of thousands of placeholders) was two thirds of the planner's time.
_PLAN_PG = text(
    f"INSERT INTO {Delivery.__tablename__} "
    "(subscriber_id, digest_date, message_id, state, attempts, created_at, updated_at) "
    "SELECT s, d, m, :state, 0, :now, :now "
    "FROM unnest(CAST(:subscribers AS INTEGER[]), CAST(:days AS DATE[]), "
    "CAST(:message_ids AS VARCHAR[])) AS t(s, d, m) "
    "ON CONFLICT (subscriber_id, digest_date) DO NOTHING RETURNING id"
).bindparams(bindparam("now", type_=UTCDateTime()))


def _insert_ignoring_conflicts(
    session: Session, rows: list[tuple[int, dt.date, str]], now: dt.datetime
) -> list[int]:
    """Insert planned deliveries (subscriber, digest date, Message-ID); rows that exist
    already are left alone. Returns the new ids."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        subscribers, days, message_ids = (list(column) for column in zip(*rows, strict=True))
        result = session.execute(
            _PLAN_PG,
            {
                "subscribers": subscribers,
                "days": days,
                "message_ids": message_ids,
                "state": DeliveryState.PLANNED.value,
                "now": now,
            },
        )
        return [row[0] for row in result]
    if dialect != "sqlite":  # pragma: no cover - other databases are not supported yet
        raise RuntimeError(f"unsupported database {dialect}")
    table = Delivery.__table__  # type: ignore[attr-defined]
    statement = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=["subscriber_id", "digest_date"])
        .returning(table.c.id)
    )
    values = [
        {
            "subscriber_id": sid,
            "digest_date": day,
            "message_id": message_id,
            "state": DeliveryState.PLANNED.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for sid, day, message_id in rows
    ]
    ids: list[int] = []
    for start in range(0, len(values), 2000):
        ids.extend(row[0] for row in session.execute(statement, values[start : start + 2000]))
    return ids


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
    plan = Plan()
    columns = (
        col(Subscriber.id),
        col(Subscriber.email),
        col(Subscriber.status),
        col(Subscriber.frequency),
        col(Subscriber.weekly_day),
        col(Subscriber.send_hour),
        col(Subscriber.timezone),
        col(Subscriber.paused_until),
    )
    last_id = 0
    found = False
    while True:
        statement = (
            select(*columns).where(col(Subscriber.id) > last_id).order_by(col(Subscriber.id))
        )
        if email is not None:
            address = services.normalize_email(email)
            statement = statement.where(col(Subscriber.email) == address)
        page = session.execute(statement.limit(page_size)).all()
        if not page:
            break
        found = True
        last_id = page[-1][0]
        new_ids = _plan_page(
            session=session,
            settings=settings,
            now=now,
            rows=page,
            digest_date=digest_date,
            email=email,
            dry_run=dry_run,
            plan=plan,
        )
        if new_ids and on_planned is not None:
            on_planned(new_ids)
        planned_here = len(plan.delivery_ids)
        if planned_here >= ANALYZE_AFTER > planned_here - len(new_ids):
            _analyze_deliveries(session)
    if len(plan.delivery_ids) >= ANALYZE_AFTER:
        _analyze_deliveries(session)
    if email is not None and not found:
        raise services.UserError(f"No subscriber with address {email}.")
    return plan


# A planner run that added this many deliveries refreshes the table's statistics (PostgreSQL),
# after its first pages and at its end: the senders' queries are planned with them, and
# statistics from before the day's rows existed made the database scan instead of look up.
ANALYZE_AFTER = 1000


def _analyze_deliveries(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ANALYZE {Delivery.__tablename__}"))
        session.commit()


def _plan_page(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    rows: Sequence[Any],
    digest_date: dt.date | None,
    email: str | None,
    dry_run: bool,
    plan: Plan,
) -> list[int]:
    catchup = dt.timedelta(hours=settings.catchup_hours)
    candidates: list[tuple[int, str, dt.date]] = []
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
            if digest_date is not None:
                day: dt.date | None = digest_date
                reason = not_due_reason(window, digest_date)
            elif email is not None:
                day = local_date(window.timezone, now)
                reason = not_due_reason(window, day)
            else:
                if window not in due:
                    due[window] = latest_due(window, now, catchup)
                day, reason = due[window]
            if reason is None and day is not None:
                candidates.append((sid, address, day))
                continue
        plan.skipped.append((address, reason or "not due"))
    if not candidates:
        return []

    # Those who already have a delivery for their date get nothing new, and are told why.
    # Those whose delivery is stuck (see `stuck_deliveries`: planned long ago by a run that
    # stopped, or sending under an expired lease) or waiting for a retry are sent again by an
    # explicit send.
    grace = now - dt.timedelta(seconds=settings.planned_grace_seconds)
    existing: dict[tuple[int, dt.date], tuple[int, str, bool]] = {}
    for day in {day for _, _, day in candidates}:
        ids = [sid for sid, _, d in candidates if d == day]
        found = session.execute(
            select(
                col(Delivery.subscriber_id),
                col(Delivery.id),
                col(Delivery.state),
                col(Delivery.retry_at).is_not(None)
                | (
                    (col(Delivery.state) == DeliveryState.SENDING)
                    & (col(Delivery.lease_until) < now)
                )
                | (
                    (col(Delivery.state) == DeliveryState.PLANNED)
                    & (col(Delivery.updated_at) <= grace)
                ),
            ).where(
                col(Delivery.digest_date) == day, one_of(session, col(Delivery.subscriber_id), ids)
            )
        )
        for sid, delivery_id, state, again in found:
            existing[(sid, day)] = (delivery_id, state, again)
    fresh = []
    for sid, address, day in candidates:
        match = existing.get((sid, day))
        if match is None:
            fresh.append((sid, address, day))
            continue
        delivery_id, state, again = match
        if again:
            plan.retry_ids.append(delivery_id)
        else:
            plan.skipped.append((address, f"already {state} for {day.isoformat()}"))
    plan.dates |= {day for _, _, day in fresh}
    if dry_run:
        plan.delivery_ids.extend(sid for sid, _, _ in fresh)  # subscriber ids in a dry run
        return []
    message_ids = services.new_message_ids(settings.from_address.rsplit("@", 1)[-1], len(fresh))
    values = [
        (sid, day, message_id) for (sid, _, day), message_id in zip(fresh, message_ids, strict=True)
    ]
    new_ids = _insert_ignoring_conflicts(session, values, now)
    session.commit()
    if len(new_ids) < len(values):
        # Another planner inserted some of these at the same moment: they are its to send.
        plan.skipped.append(("(several)", "planned by another planner at the same time"))
    plan.delivery_ids.extend(new_ids)
    return new_ids


# ---------------------------------------------------------------------------------------------
# Ranking cache


def release_freed_memory() -> None:
    """Give the heap freed after fitting (a vocabulary of every bigram, SVD work arrays) back
    to the operating system, so a long-lived worker does not keep its peak for the day."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# Part of a cached corpus's file name: a new PreparedCorpus layout, or new ranking code, never
# loads a corpus prepared by another.
CORPUS_FORMAT = (
    2,
    hashlib.sha256(Path(ranking.__file__).read_bytes()).hexdigest()[:16],
)


class CorpusCache:
    """Prepared candidate corpora by digest date, reused across batches for `max_age` seconds.

    With a `directory`, a prepared corpus is also shared between the worker processes of a
    host: the first to need it fits the model (seconds, and the memory peak of the day) under a
    file lock and writes it; the others wait for the lock and load it.
    """

    def __init__(
        self,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        directory: Path | None = None,
    ):
        self.max_age = max_age
        self.clock = clock
        self.directory = directory
        self._entries: dict[dt.date, tuple[float, PreparedCorpus, dict[str, Paper]]] = {}

    def get(
        self, *, session: Session, settings: Settings, digest_date: dt.date, now: dt.datetime
    ) -> tuple[PreparedCorpus, dict[str, Paper]]:
        entry = self._entries.get(digest_date)
        if entry is not None and self.clock() - entry[0] < self.max_age:
            return entry[1], entry[2]
        # What the last corpus left out of garbage collection is collectable again.
        gc.unfreeze()
        self._entries = {}
        as_of = services.digest_as_of(digest_date, now)
        papers = services.candidate_papers(
            session=session, as_of=as_of, days=settings.candidate_days
        )
        for paper in papers:
            session.expunge(paper)  # kept across sessions; never expired or flushed
        corpus = self._prepare(papers, as_of, settings)
        by_id = {p.id: p for p in papers}
        release_freed_memory()
        self._entries = {digest_date: (self.clock(), corpus, by_id)}  # keep one date's corpus
        # The corpus (thousands of papers, their reasons, the query memo) lives as long as this
        # entry: left out of the collector's passes, which otherwise walked it again and again,
        # a tenth of a worker's time. Unfrozen when the entry is replaced.
        gc.collect()
        gc.freeze()
        return corpus, by_id

    def _prepare(
        self, papers: list[Paper], as_of: dt.datetime, settings: Settings
    ) -> PreparedCorpus:
        config = services.ranking_config(settings)

        def prepare() -> PreparedCorpus:
            return prepare_corpus([RankPaper.of(p) for p in papers], now=as_of, config=config)

        if self.directory is None:
            return prepare()
        # Same candidates, same configuration, same ten minutes: the same prepared corpus.
        bucket = as_of.replace(minute=as_of.minute - as_of.minute % 10, second=0, microsecond=0)
        key = hashlib.sha256(
            repr(
                (
                    CORPUS_FORMAT,
                    bucket.isoformat(),
                    config,
                    [(p.id, p.updated_at) for p in papers],
                )
            ).encode()
        ).hexdigest()[:32]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"corpus-{key}.pickle"
        with open(self.directory / f"corpus-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                write_shared(prepare(), path)
                _remove_stale(self.directory, keep=path)
            try:
                return read_shared(path)
            except (OSError, ValueError, pickle.UnpicklingError, EOFError):
                # A damaged file is prepared again.
                corpus = prepare()
                write_shared(corpus, path)
                return corpus


def write_shared(corpus: PreparedCorpus, path: Path) -> None:
    """Write a prepared corpus as a pickle whose arrays lie apart, page-aligned, in
    `<path>.arrays`, so that `read_shared` can map them instead of copying them."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(corpus, protocol=5, buffer_callback=buffers.append)
    offsets, position = [], 0
    tmp_arrays = path.with_suffix(".arrays.tmp")
    with tmp_arrays.open("wb") as out:
        for buffer in buffers:
            raw = buffer.raw()
            position += -position % mmap.PAGESIZE
            out.seek(position)
            out.write(raw)
            offsets.append((position, raw.nbytes))
            position += raw.nbytes
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        pickle.dump(offsets, out, protocol=5)
        out.write(body)
    os.replace(tmp_arrays, path.with_suffix(".arrays"))
    os.replace(tmp, path)


def read_shared(path: Path) -> PreparedCorpus:
    """A corpus written by `write_shared` (by this service: only it writes the cache
    directory). Its arrays are read-only views of the mapped file: every worker process of the
    host reads the same pages of the day's model instead of holding a copy of its own."""
    with path.open("rb") as handle:
        offsets = pickle.load(handle)
        body = handle.read()
    with path.with_suffix(".arrays").open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(mapped)
    corpus = pickle.loads(body, buffers=[view[start : start + n] for start, n in offsets])
    if not isinstance(corpus, PreparedCorpus):
        raise ValueError(f"{path} holds no prepared corpus")
    return corpus


def _remove_stale(directory: Path, *, keep: Path, max_age: float = 86400.0) -> None:
    """Prepared corpora older than a day are of no use to anyone."""
    cutoff = time.time() - max_age
    for old in directory.glob("corpus-*"):
        try:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Sending


def _claim(
    *,
    session: Session,
    delivery_ids: Sequence[int],
    now: dt.datetime,
    settings: Settings,
    retry_now: bool = False,
) -> list[int]:
    """Atomically take the deliveries that are free to send: planned, failed and due for a
    retry, or sending under a lease that ran out (its worker died)."""
    if not delivery_ids:
        return []
    statement = (
        update(Delivery)
        .where(one_of(session, col(Delivery.id), delivery_ids))
        .where(
            or_(
                col(Delivery.state) == DeliveryState.PLANNED.value,
                and_(
                    col(Delivery.state) == DeliveryState.SENDING.value,
                    col(Delivery.lease_until) < now,
                ),
                and_(
                    col(Delivery.state) == DeliveryState.FAILED.value,
                    col(Delivery.retry_at).is_not(None),
                    # An explicit send retries at once what is waiting for a retry.
                    col(Delivery.retry_at) <= (now + dt.timedelta(days=1) if retry_now else now),
                ),
            )
        )
        .values(
            state=DeliveryState.SENDING.value,
            lease_until=now + dt.timedelta(seconds=settings.lease_seconds),
            attempts=col(Delivery.attempts) + 1,
            updated_at=now,
            retry_at=None,
        )
        .returning(col(Delivery.id))
    )
    claimed = [row[0] for row in session.execute(statement)]
    session.commit()
    return claimed


# Built once: executing the same statement object reuses SQLAlchemy's compiled form.
_SET_STATE = (
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
_SET_SENT = _SET_STATE.values(sent_at=bindparam("now", type_=UTCDateTime()))


def _set_state(
    session: Session | DBConnection,
    delivery_id: int,
    state: DeliveryState,
    now: dt.datetime,
    *,
    reason: str | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    statement = _SET_SENT if state == DeliveryState.SENT else _SET_STATE
    session.execute(
        statement,
        {
            "delivery_id": delivery_id,
            "state": state.value,
            "reason": reason,
            "now": now,
            "retry_at": retry_at,
        },
    )
    session.commit()


class SentMarker:
    """Records "sent" for one delivery, one autocommitted statement per message, right after
    the SMTP server accepted it: the statement that keeps a killed worker from sending twice,
    run 100,000 times a day.

    On PostgreSQL it is a server-side prepared statement run through libpq itself (psycopg's
    `pgconn`): no query text to convert per call, half the client CPU of a prepared cursor
    execute and a twentieth of an SQLAlchemy one; elsewhere the portable Core statement.
    """

    _NAME = b"digest_mark_sent"
    _SQL = (
        f"UPDATE {Delivery.__tablename__} SET state = '{DeliveryState.SENT.value}', reason = NULL, "
        "updated_at = $1, "
        "lease_until = NULL, retry_at = NULL, sent_at = $1 WHERE id = $2"
    ).encode()

    def __init__(self, db: DBConnection) -> None:
        self.db = db
        self.pgconn: Any = None
        if db.dialect.name == "postgresql":
            from psycopg import pq

            self.pgconn = db.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            result = self.pgconn.prepare(self._NAME, self._SQL)
            # A pooled connection keeps what it prepared for an earlier batch (42P05).
            if result.status != pq.ExecStatus.COMMAND_OK and (
                result.error_field(pq.DiagnosticField.SQLSTATE) != b"42P05"
            ):
                self._raise(result)

    def __call__(self, delivery_id: int, now: dt.datetime) -> None:
        if self.pgconn is None:
            _set_state(self.db, delivery_id, DeliveryState.SENT, now)
            return
        result = self.pgconn.exec_prepared(
            self._NAME, [now.isoformat().encode(), str(delivery_id).encode()]
        )
        if result.status != 1:  # pq.ExecStatus.COMMAND_OK
            self._raise(result)

    @staticmethod
    def _raise(result: Any) -> None:
        import psycopg.errors

        raise psycopg.errors.error_from_result(result, encoding="utf-8")


def insert_rows(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (a batch of digests
    has thousands of items), executemany elsewhere."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), rows)
        return
    columns = list(rows[0])
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


class _Claimed(NamedTuple):
    """What sending needs of a claimed delivery row."""

    id: int
    digest_date: dt.date
    message_id: str | None
    attempts: int
    created_at: dt.datetime


@dataclass
class Outgoing:
    delivery_id: int
    subscriber: Subscriber
    picks: list[Pick]
    message: Mail
    attempts: int
    created_at: dt.datetime


def backoff(attempt: int, base: float, cap: float = 3600.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... at most `cap` seconds."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


@contextmanager
def _unexpired(session: Session) -> Iterator[None]:
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield
    finally:
        session.expire_on_commit = expire


def send_deliveries(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    delivery_ids: Sequence[int],
    now: dt.datetime,
    cache: CorpusCache | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] | None = None,
    retry_now: bool = False,
) -> SendSummary:
    """Claim these deliveries, rank their subscribers in one batch, render, send, record.

    Idempotent: deliveries that are sent, skipped, or being sent by a live worker are left
    alone, so a retried, duplicated or redelivered task sends nothing twice.
    """
    # Objects loaded here are read after the commits below: keep them loaded, not expired.
    with _unexpired(session):
        clock = clock or (lambda: now)
        cache = cache or CorpusCache()
        summary = SendSummary()
        claimed = _claim(
            session=session,
            delivery_ids=delivery_ids,
            now=now,
            settings=settings,
            retry_now=retry_now,
        )
        if progress and len(delivery_ids) > len(claimed):
            progress(len(delivery_ids) - len(claimed))
        if not claimed:
            return summary
        # The claimed rows' few columns as tuples (only subscribers are needed as objects):
        # building ORM objects for both cost more than the query.
        rows = [
            (_Claimed(*row[:5]), row[5])
            for row in session.execute(
                select(
                    col(Delivery.id),
                    col(Delivery.digest_date),
                    col(Delivery.message_id),
                    col(Delivery.attempts),
                    col(Delivery.created_at),
                    Subscriber,
                )
                .join(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
                .where(one_of(session, col(Delivery.id), claimed))
                .order_by(col(Delivery.id))
            )
        ]
        # Items of an earlier, failed attempt are replaced by this attempt's picks (a first
        # attempt has none: no statement, which stale statistics could turn into a scan).
        retried = [d.id for d, _ in rows if d.attempts > 1]
        if retried:
            session.execute(delete(DeliveryItem).where(col(DeliveryItem.delivery_id).in_(retried)))
            session.commit()

        by_date: dict[dt.date, list[tuple[_Claimed, Subscriber]]] = {}
        for delivery, subscriber in rows:
            # Unsubscribing (or a pause) between planning and sending is honoured, always.
            reason = status_reason(subscriber) or not_due_reason(
                window_of(subscriber), delivery.digest_date
            )
            if reason:
                _set_state(session, delivery.id, DeliveryState.SKIPPED, now, reason=reason)
                summary.skipped.append((subscriber.email, reason))
                if progress:
                    progress(1)
                continue
            by_date.setdefault(delivery.digest_date, []).append((delivery, subscriber))

        outgoing: list[Outgoing] = []
        item_rows: list[dict[str, Any]] = []
        for day, pairs in sorted(by_date.items()):
            summary.digest_date = day
            corpus, papers = cache.get(session=session, settings=settings, digest_date=day, now=now)
            profiles = services.profiles_for(
                session=session, subscribers=[s for _, s in pairs], today=day
            )
            picks_per = rank_prepared(corpus, profiles, config=services.ranking_config(settings))
            for (delivery, subscriber), picks in zip(pairs, picks_per, strict=True):
                if not picks:
                    reason = services.empty_reason(len(corpus.papers), settings)
                    assert delivery.id is not None
                    _set_state(session, delivery.id, DeliveryState.SKIPPED, now, reason=reason)
                    summary.skipped.append((subscriber.email, reason))
                    if progress:
                        progress(1)
                    continue
                context = services.digest_context(
                    settings=settings,
                    subscriber=subscriber,
                    digest_date=day,
                    picks=picks,
                    papers=papers,
                )
                envelope = Envelope(
                    sender_name=settings.from_name,
                    sender_address=settings.from_address,
                    recipient=subscriber.email,
                    now=now,
                    message_id=delivery.message_id
                    or services.new_message_id(settings.from_address.rsplit("@", 1)[-1]),
                )
                message = render_digest(settings.templates_dir, context, envelope)
                assert delivery.id is not None
                outgoing.append(
                    Outgoing(
                        delivery.id,
                        subscriber,
                        picks,
                        message,
                        delivery.attempts,
                        delivery.created_at,
                    )
                )
                item_rows.extend(
                    {
                        "delivery_id": delivery.id,
                        "paper_id": p.paper_id,
                        "rank": rank,
                        "score": p.score,
                        "why": p.why,
                    }
                    for rank, p in enumerate(picks, start=1)
                )
        if item_rows:
            # Recorded before sending: a paper being sent already counts as sent to that person.
            insert_rows(session, DeliveryItem.__table__, item_rows)  # type: ignore[attr-defined]
            session.commit()
        if outgoing:
            _transmit(
                session=session,
                mailer=mailer,
                settings=settings,
                outgoing=outgoing,
                summary=summary,
                now=now,
                progress=progress,
                sleep=sleep,
                clock=clock,
            )
        return summary


def _transmit(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    outgoing: list[Outgoing],
    summary: SendSummary,
    now: dt.datetime,
    progress: Progress | None,
    sleep: Callable[[float], None],
    clock: Callable[[], dt.datetime],
) -> None:
    pending = list(outgoing)
    # Outcomes are written through a plain connection, one commit per message, right after the
    # server answered: no ORM bookkeeping on the hot path.
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    # Autocommit: each outcome is one statement and one round trip to the database.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        if db.dialect.name == "postgresql":
            # Each outcome is its own commit; not waiting for the WAL flush makes that cheap.
            # A worker that dies loses nothing (the commit is in the server); only a crash of
            # PostgreSQL itself could lose the last fraction of a second of "sent" marks, and
            # those digests would then go out again: at-least-once in that one case.
            db.exec_driver_sql("SET synchronous_commit TO OFF")
            db.commit()
        _transmit_on(
            db,
            mailer=mailer,
            settings=settings,
            pending=pending,
            summary=summary,
            progress=progress,
            sleep=sleep,
            clock=clock,
        )
        if db.dialect.name == "postgresql":
            db.exec_driver_sql("RESET synchronous_commit")  # the pooled connection is shared
            db.commit()


def _transmit_on(
    db: DBConnection,
    *,
    mailer: Mailer,
    settings: Settings,
    pending: list[Outgoing],
    summary: SendSummary,
    progress: Progress | None,
    sleep: Callable[[float], None],
    clock: Callable[[], dt.datetime],
) -> None:
    mark_sent = SentMarker(db)
    try:
        with mailer.connect() as connection:
            while pending:
                item = pending.pop(0)
                error = _send_with_retries(connection, item.message, settings, sleep)
                if error is None:
                    mark_sent(item.delivery_id, clock())
                    summary.sent.append((item.subscriber.email, len(item.picks)))
                    if item.subscriber.bounce_count:
                        # Delivered: a run of permanent failures is over.
                        db.execute(
                            update(Subscriber)
                            .where(col(Subscriber.id) == item.subscriber.id)
                            .values(bounce_count=0)
                        )
                        db.commit()
                else:
                    _record_failure(
                        session=db,
                        settings=settings,
                        item=item,
                        error=error,
                        summary=summary,
                        now=clock(),
                    )
                if progress:
                    progress(1)
    except DeliveryError as exc:
        # The server could not be reached at all (or went away for good): the rest fail for
        # now and are retried later, nothing is lost.
        for item in pending:
            _record_failure(
                session=db,
                settings=settings,
                item=item,
                error=exc,
                summary=summary,
                now=clock(),
            )
            if progress:
                progress(1)


def _send_with_retries(
    connection: Connection,
    message: Mail,
    settings: Settings,
    sleep: Callable[[float], None],
) -> DeliveryError | None:
    """Send one message; temporary failures are tried again a few times with backoff."""
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
                sleep(backoff(attempt, settings.smtp_retry_base_seconds, cap=30.0))
    return last


def _record_failure(
    *,
    session: Session | DBConnection,
    settings: Settings,
    item: Outgoing,
    error: DeliveryError,
    summary: SendSummary,
    now: dt.datetime,
) -> None:
    subscriber = item.subscriber
    reason = str(error)
    if error.permanent:
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == subscriber.id)
            .values(bounce_count=col(Subscriber.bounce_count) + 1)
        )
        session.commit()
        count = session.execute(
            select(col(Subscriber.bounce_count)).where(col(Subscriber.id) == subscriber.id)
        ).scalar_one()
        if count >= settings.suppress_after_failures:
            session.execute(
                update(Subscriber)
                .where(col(Subscriber.id) == subscriber.id)
                .values(status=SubscriberStatus.SUPPRESSED.value)
            )
            reason += f" (address suppressed after {count} permanent failures)"
        _set_state(session, item.delivery_id, DeliveryState.FAILED, now, reason=reason)
        summary.failed.append((subscriber.email, reason))
        return
    deadline = item.created_at + dt.timedelta(hours=settings.retry_deadline_hours)
    retry_at = now + dt.timedelta(seconds=backoff(item.attempts, settings.retry_base_seconds))
    if retry_at > deadline:
        reason += f" (gave up after {item.attempts} attempts)"
        _set_state(session, item.delivery_id, DeliveryState.FAILED, now, reason=reason)
        summary.failed.append((subscriber.email, reason))
        return
    _set_state(
        session, item.delivery_id, DeliveryState.FAILED, now, reason=reason, retry_at=retry_at
    )
    summary.failed.append((subscriber.email, reason))
    summary.retry.append((item.delivery_id, retry_at))


# ---------------------------------------------------------------------------------------------
# Sweeping


def stuck_deliveries(*, session: Session, settings: Settings, now: dt.datetime) -> list[int]:
    """Deliveries to queue again: planned but untouched for a while (a lost task), sending
    under an expired lease (a dead worker), failed and due for a retry (a lost retry)."""
    grace = now - dt.timedelta(seconds=settings.planned_grace_seconds)
    # Only recent digests can be stuck: planned within the catch-up window, retried until the
    # deadline, in any time zone. The date index narrows the search to them.
    horizon = now - dt.timedelta(hours=settings.catchup_hours + settings.retry_deadline_hours + 48)
    statement = (
        select(col(Delivery.id))
        .where(col(Delivery.digest_date) >= horizon.date())
        .where(
            or_(
                and_(
                    col(Delivery.state) == DeliveryState.PLANNED.value,
                    col(Delivery.updated_at) <= grace,
                ),
                and_(
                    col(Delivery.state) == DeliveryState.SENDING.value,
                    col(Delivery.lease_until) < now,
                ),
                and_(
                    col(Delivery.state) == DeliveryState.FAILED.value,
                    col(Delivery.retry_at).is_not(None),
                    col(Delivery.retry_at) <= now,
                ),
            )
        )
        .order_by(col(Delivery.id))
    )
    ids = [row[0] for row in session.execute(statement)]
    if ids:
        # Touch the planned ones so the next sweep does not queue them again at once.
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), col(Delivery.state) == DeliveryState.PLANNED.value)
            .values(updated_at=now)
        )
        session.commit()
    return ids


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


# ---------------------------------------------------------------------------------------------
# The synchronous path (CLI): plan, then send in batches in this process


def send_due_digests(
    *,
    session: Session,
    mailer: Mailer,
    settings: Settings,
    now: dt.datetime,
    digest_date: dt.date | None = None,
    email: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SendSummary:
    """Send every due digest (or one address's, or everyone's for a date) and record the run."""
    plan = plan_deliveries(
        session=session,
        settings=settings,
        now=now,
        digest_date=digest_date,
        email=email,
        dry_run=dry_run,
    )
    summary = SendSummary(
        digest_date=digest_date or (min(plan.dates) if plan.dates else None), dry_run=dry_run
    )
    summary.skipped.extend(plan.skipped)
    if on_total:
        on_total(len(plan.delivery_ids) + len(plan.retry_ids))
    if dry_run:
        summary.merge(
            _dry_run(
                session=session,
                settings=settings,
                now=now,
                subscriber_ids=plan.delivery_ids,
                digest_date=digest_date,
                progress=progress,
            )
        )
        return summary
    run = Run(kind="send", started_at=now)
    session.add(run)
    session.commit()
    cache = CorpusCache()
    try:
        # An explicit send also tries again, now, what failed temporarily for these dates.
        for batch in batches(plan.retry_ids + plan.delivery_ids, settings.send_batch_size):
            summary.merge(
                send_deliveries(
                    session=session,
                    mailer=mailer,
                    settings=settings,
                    delivery_ids=batch,
                    now=now,
                    cache=cache,
                    progress=progress,
                    sleep=sleep,
                    retry_now=True,
                )
            )
    except BaseException as error:
        # Stopped (Ctrl-C) or broken part-way: the run says so, with what was done until then,
        # instead of staying "running" for ever. What was sent stays recorded as sent.
        _record_stopped_run(session, run, summary, error, now)
        raise
    run.finished_at = now
    run.status = "ok" if not summary.failed else "partial"
    run.summary = summary.as_dict()
    session.add(run)
    session.commit()
    return summary


def _record_stopped_run(
    session: Session, run: Run, summary: SendSummary, error: BaseException, now: dt.datetime
) -> None:
    try:
        session.rollback()
        run.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        run.finished_at = now
        run.summary = {**summary.as_dict(), "error": f"{type(error).__name__}: {error}"}
        session.add(run)
        session.commit()
    except Exception:  # the store itself is gone: the original error is what matters
        log.exception("could not record the end of send run %s", run.id)


def _dry_run(
    *,
    session: Session,
    settings: Settings,
    now: dt.datetime,
    subscriber_ids: list[int],
    digest_date: dt.date | None,
    progress: Progress | None,
) -> SendSummary:
    summary = SendSummary(dry_run=True)
    subscribers = list(
        session.execute(select(Subscriber).where(col(Subscriber.id).in_(subscriber_ids))).scalars()
    )
    if not subscribers:
        return summary
    day = digest_date or local_date(subscribers[0].timezone, now)
    corpus, _ = CorpusCache().get(session=session, settings=settings, digest_date=day, now=now)
    profiles = services.profiles_for(session=session, subscribers=subscribers)
    for subscriber, picks in zip(
        subscribers,
        rank_prepared(corpus, profiles, config=services.ranking_config(settings)),
        strict=True,
    ):
        if picks:
            summary.sent.append((subscriber.email, len(picks)))
        else:
            summary.skipped.append(
                (subscriber.email, services.empty_reason(len(corpus.papers), settings))
            )
        if progress:
            progress(1)
    return summary


# ---------------------------------------------------------------------------------------------
# Explaining


def why(
    *,
    session: Session,
    settings: Settings,
    email: str,
    now: dt.datetime,
    digest_date: dt.date | None = None,
) -> list[str]:
    """What this subscriber got on a digest date, or why they got nothing, in plain lines."""
    subscriber = services.get_subscriber(session=session, email=email)
    if subscriber is None:
        raise services.UserError(f"No subscriber with address {email}.")
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
        reason = status_reason(subscriber) or not_due_reason(window_of(subscriber), day)
        if reason is None:
            _, reason = latest_due(
                window_of(subscriber), now, dt.timedelta(hours=settings.catchup_hours)
            )
            reason = reason or "due, not planned yet (the planner runs every "
            if reason.endswith("every "):
                reason += f"{settings.plan_every_minutes} minutes)"
        lines.append(f"{day.isoformat()}: nothing sent: {reason}")
        return lines
    head = f"{day.isoformat()}: {delivery.state}"
    if delivery.state == DeliveryState.SENT and delivery.sent_at:
        head += f" at {delivery.sent_at.strftime('%H:%M:%S UTC')}"
    if delivery.reason:
        head += f": {delivery.reason}"
    if delivery.attempts > 1:
        head += f" ({delivery.attempts} attempts)"
    if delivery.retry_at:
        head += f"; next attempt {delivery.retry_at.strftime('%Y-%m-%d %H:%M UTC')}"
    lines.append(head)
    items = session.execute(
        select(DeliveryItem, col(Paper.title))
        .join(Paper, col(Paper.id) == col(DeliveryItem.paper_id))
        .where(col(DeliveryItem.delivery_id) == delivery.id)
        .order_by(col(DeliveryItem.rank))
    ).all()
    for item, title in items:
        lines.append(f"  {item.rank:2d}. {title} — {item.why}")
    return lines


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


def record_plan(*, session: Session, plan: Plan, now: dt.datetime) -> Run:
    """A run record for a planner pass: how many were planned, and why the others were not."""
    run = Run(
        kind="plan",
        started_at=now,
        finished_at=now,
        status="ok",
        summary={
            "planned": len(plan.delivery_ids),
            "dates": sorted(day.isoformat() for day in plan.dates),
            "not_planned_by_reason": count_reasons(plan.skipped),
        },
    )
    session.add(run)
    session.commit()
    return run
