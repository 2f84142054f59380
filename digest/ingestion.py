"""Ingestion runs: fetch one source, parse, store the good papers, and record what happened (and
why a morning may have no new papers) as a Run row that `digest status` shows."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from digest.config import Settings
from digest.errors import UserError
from digest.logs import event
from digest.models import Run
from digest.papers import PaperIn
from digest.paperstore import load_seeds, upsert_papers
from digest.runs import log_run_finished, log_run_started, run_fields
from digest.sources import BadResponse, ParseResult
from digest.sources.arxiv import (
    fetch_arxiv_api,
    fetch_arxiv_rss,
    parse_arxiv_atom,
    parse_arxiv_rss,
)
from digest.sources.hf import fetch_hf_daily, parse_hf_daily
from digest.sources.http import FetchError, HttpClient, Response, Throttle

SOURCES = ("hf", "arxiv", "seeds")
MAX_RECORDED_MESSAGES = 50  # per list in a run summary; the counts are always complete
MAX_LOGGED_ERRORS = 5  # per run: the rest are in the run's record (`digest status`)

Sleep = Callable[[float], None]
log = logging.getLogger(__name__)


def make_client(
    settings: Settings, *, sleep: Sleep, throttle: Throttle | None = None
) -> HttpClient:
    return HttpClient(
        user_agent=settings.http_user_agent,
        timeout=settings.http_timeout,
        retries=settings.http_retries,
        backoff=settings.http_backoff_seconds,
        max_wait=settings.http_max_wait_seconds,
        sleep=sleep,
        throttle=throttle,
    )


@dataclass
class Collected:
    """What the requests of one run brought back, before it is stored."""

    requests: int = 0
    failed_requests: int = 0
    papers: list[PaperIn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failed requests, unreadable bodies
    bad_items: list[str] = field(default_factory=list)  # items dropped from readable bodies
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, result: ParseResult) -> None:
        self.papers.extend(result.papers)
        self.bad_items.extend(f"{label}: {error}" for error in result.errors)
        self.notes.extend(f"{label}: {note}" for note in result.notes)

    def parse(self, label: str, response: Response, parser: Callable[[bytes], ParseResult]) -> None:
        self.requests += 1
        try:
            self.add(label, parser(response.body))
        except BadResponse as exc:
            self.failed_requests += 1
            self.errors.append(f"{label}: {exc} (HTTP {response.status}, {response.content_type})")

    def fetch_failed(self, label: str, exc: Exception) -> None:
        self.requests += 1
        self.failed_requests += 1
        self.errors.append(f"{label}: {exc}")


def collect_hf(settings: Settings, *, day: dt.date | None, sleep: Sleep) -> Collected:
    collected = Collected()
    with make_client(settings, sleep=sleep) as client:
        label = f"hf {day.isoformat() if day else 'latest'}"
        pages = fetch_hf_daily(
            client, day=day, limit=settings.hf_page_size, url=settings.hf_daily_papers_url
        )
        try:
            # Page by page, so the pages read before a failure are kept.
            for number, response in enumerate(pages):
                collected.parse(f"{label} page {number}", response, parse_hf_daily)
        except FetchError as exc:
            collected.fetch_failed(label, exc)
    return collected


def collect_arxiv(
    settings: Settings,
    *,
    day: dt.date | None,
    categories: Sequence[str],
    sleep: Sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Collected:
    """RSS (today's announcements) per category, or the API by submission day with `day`."""
    collected = Collected()
    # One client, so one connection; the throttle spaces every request (retries included).
    throttle = Throttle(settings.arxiv_delay_seconds, sleep=sleep, clock=clock)
    with make_client(settings, sleep=sleep, throttle=throttle) as client:
        for category in categories:
            if day is None:
                label = f"arxiv rss {category}"
                try:
                    response = fetch_arxiv_rss(
                        client, category=category, url=settings.arxiv_rss_url
                    )
                except FetchError as exc:
                    collected.fetch_failed(label, exc)
                    continue
                collected.parse(label, response, parse_arxiv_rss)
            else:
                label = f"arxiv api {category} {day.isoformat()}"
                pages = fetch_arxiv_api(
                    client,
                    category=category,
                    day=day,
                    page_size=settings.arxiv_page_size,
                    url=settings.arxiv_api_url,
                )
                try:
                    for number, response in enumerate(pages):
                        collected.parse(f"{label} page {number}", response, parse_arxiv_atom)
                except FetchError as exc:
                    collected.fetch_failed(label, exc)
    return collected


def empty_reason(collected: Collected, new: int) -> str | None:
    """Why this run brought no new paper, in words an operator can act on."""
    if new:
        return None
    if collected.requests and collected.failed_requests == collected.requests:
        return "source unavailable: every request failed (see errors)"
    if not collected.papers:
        return "the source listed no papers" + (
            f" ({'; '.join(collected.notes[:3])})" if collected.notes else ""
        )
    return "everything listed was already stored"


def _record(run: Run, summary: dict[str, Any]) -> None:
    for key in ("errors", "bad_items", "notes"):
        values = summary.get(key) or []
        if len(values) > MAX_RECORDED_MESSAGES:
            summary[key] = values[:MAX_RECORDED_MESSAGES] + [
                f"... and {len(values) - MAX_RECORDED_MESSAGES} more"
            ]
    run.summary = summary


def _record_crash(
    session: Session, run: Run, summary: dict[str, Any], exc: Exception, now: dt.datetime
) -> None:
    run.status = "failed"
    run.finished_at = now
    _record(run, {**summary, "errors": [f"{type(exc).__name__}: {exc}"]})
    session.add(run)
    session.commit()
    event(log, "ingest.crashed", level=logging.ERROR, exc_info=True, **run_fields(run))


def ingest_source(
    *,
    session: Session,
    settings: Settings,
    source: str,
    now: dt.datetime,
    day: dt.date | None = None,
    categories: Sequence[str] | None = None,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stored_at: Callable[[], dt.datetime] | None = None,
) -> Run:
    """Fetch one source, store what could be read, and record the run; never deletes papers.

    `stored_at` (a wall clock; default: `now`) stamps the papers when they are written, not when
    the fetch began: a digest skipped for want of papers while this run fetched is looked at
    again because its papers are stamped after the skip."""
    if source not in SOURCES:
        raise UserError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    categories = list(categories or settings.arxiv_categories)
    run = Run(kind="ingest", started_at=now, summary={"source": source})
    session.add(run)
    session.commit()
    log_run_started(log, run)
    summary: dict[str, Any] = {"source": source}
    if day is not None:
        summary["date"] = day.isoformat()
    if source == "arxiv":
        summary["categories"] = categories

    if source == "seeds":
        report = load_seeds(session=session, settings=settings, now=now)
        collected = Collected(requests=0)
        summary.update(
            fetched=report.read,
            new=report.new,
            updated=report.updated,
            unchanged=report.unchanged,
        )
        collected.bad_items = [f"line {b.line_number}: {b.error}" for b in report.bad_lines]
    else:
        try:
            if source == "hf":
                collected = collect_hf(settings, day=day, sleep=sleep)
            else:
                collected = collect_arxiv(
                    settings, day=day, categories=categories, sleep=sleep, clock=clock
                )
        except Exception as exc:  # a bug or an unforeseen failure: record it, keep the store
            _record_crash(session, run, summary, exc, now)
            raise
        written = stored_at() if stored_at is not None else now
        result = upsert_papers(session=session, papers=collected.papers, now=written)
        summary.update(
            fetched=len(collected.papers),
            new=result.new,
            updated=result.updated,
            unchanged=result.unchanged,
        )
    summary.update(
        requests=collected.requests,
        failed_requests=collected.failed_requests,
        bad_item_count=len(collected.bad_items),
        errors=collected.errors,
        bad_items=collected.bad_items,
        notes=collected.notes,
    )
    reason = empty_reason(collected, summary["new"]) if source != "seeds" else None
    if reason:
        summary["empty_reason"] = reason
    if collected.requests and collected.failed_requests == collected.requests:
        run.status = "failed"
    elif collected.errors or collected.bad_items:
        run.status = "partial"
    else:
        run.status = "ok"
    run.finished_at = now
    _record(run, summary)
    session.add(run)
    session.commit()
    log_run_finished(log, run)
    for error in collected.errors[:MAX_LOGGED_ERRORS]:
        event(log, "ingest.request_failed", level=logging.WARNING, source=source, error=error)
    return run


def ingest_sources(
    *,
    session: Session,
    settings: Settings,
    clock: Callable[[], dt.datetime],
    sources: Sequence[str] | None = None,
    day: dt.date | None = None,
    categories: Sequence[str] | None = None,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[Run], None] | None = None,
    sleep: Sleep = time.sleep,
) -> list[Run]:
    """One recorded run per source (`sources`, or every configured one), each started at
    `clock()`: what the CLI and the worker's ingest task both do. `on_start` and `on_done`
    see each source begin and each run end (the CLI reports as it goes)."""
    runs = []
    for source in sources or settings.ingest_sources:
        if on_start is not None:
            on_start(source)
        run = ingest_source(
            session=session,
            settings=settings,
            source=source,
            now=clock(),
            day=day,
            categories=categories,
            sleep=sleep,
            stored_at=clock,
        )
        runs.append(run)
        if on_done is not None:
            on_done(run)
    return runs
