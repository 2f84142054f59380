"""Run records (ingest, plan, send): the latest ones, for `digest status`, each in readable
lines, and the one log line of a run's start and end."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, col, select

from digest.logs import event
from digest.models import Run

MAX_REASONS = 5
# The counts of a send run, in the order `digest status` and the log line give them.
SEND_COUNTS = ("sent", "skipped", "failed", "retrying")
# The words of a summary that go into a run's log line beside its counts.
WORDS = ("source", "date", "digest_date", "empty_reason", "error")


def last_runs(*, session: Session, limit: int = 10) -> list[Run]:
    return list(
        session.exec(
            select(Run).order_by(col(Run.started_at).desc(), col(Run.id).desc()).limit(limit)
        )
    )


def _scalars(summary: dict[str, Any], skip: set[str]) -> list[str]:
    """The summary's other numbers and words (a count a later version added), as `key value`."""
    return [
        f"{key.replace('_', ' ')} {value}"
        for key, value in summary.items()
        if key not in skip and isinstance(value, int | float | str) and not isinstance(value, bool)
    ]


def _reason_lines(what: str, counts: object) -> list[str]:
    if not isinstance(counts, dict) or not counts:
        return []
    ranked = sorted(counts.items(), key=lambda item: (-int(item[1]), str(item[0])))
    lines = [f"{what} {n}: {reason}" for reason, n in ranked[:MAX_REASONS]]
    if len(ranked) > MAX_REASONS:
        rest = sum(int(n) for _, n in ranked[MAX_REASONS:])
        lines.append(f"{what} {rest}: {len(ranked) - MAX_REASONS} other reasons")
    return lines


def describe_ingest(summary: dict[str, Any]) -> list[str]:
    """An ingest run in a few lines: counts, then why it was empty, then what went wrong."""
    s = summary
    where = s.get("source", "?")
    if s.get("date"):
        where += f" {s['date']}"
    if s.get("categories"):
        where += f" [{', '.join(s['categories'])}]"
    lines = [
        f"{where}: fetched {s.get('fetched', 0)}, new {s.get('new', 0)}, "
        f"updated {s.get('updated', 0)}, bad items {s.get('bad_item_count', 0)}, "
        f"failed requests {s.get('failed_requests', 0)}/{s.get('requests', 0)}"
    ]
    if s.get("empty_reason"):
        lines.append(f"no new papers: {s['empty_reason']}")
    lines += [f"error: {e}" for e in s.get("errors", [])[:5]]
    lines += [f"bad item: {e}" for e in s.get("bad_items", [])[:5]]
    lines += [f"note: {n}" for n in s.get("notes", [])[:5]]
    return lines


def describe_send(summary: dict[str, Any]) -> list[str]:
    """A send run: its digest date and counts, then the commonest reasons for skips and
    failures, then the error that stopped it."""
    known = {*SEND_COUNTS, "digest_date", "dry_run", "skipped_by_reason", "failed_by_reason"}
    known.add("error")
    head = f"digest date {summary.get('digest_date') or '(each subscriber’s own)'}: "
    parts = [f"{key} {summary.get(key, 0)}" for key in SEND_COUNTS]
    parts += _scalars(summary, known)
    lines = [head + ", ".join(parts) + (" (dry run)" if summary.get("dry_run") else "")]
    lines += _reason_lines("skipped", summary.get("skipped_by_reason"))
    lines += _reason_lines("failed", summary.get("failed_by_reason"))
    if summary.get("error"):
        lines.append(f"stopped by: {summary['error']}")
    return lines


def describe_plan(summary: dict[str, Any]) -> list[str]:
    dates = summary.get("dates") or []
    head = f"planned {summary.get('planned', 0)}"
    if dates:
        head += f" for {', '.join(str(day) for day in dates)}"
    extra = _scalars(summary, {"planned", "dates", "not_planned_by_reason"})
    lines = [", ".join([head, *extra])]
    return lines + _reason_lines("not planned", summary.get("not_planned_by_reason"))


def describe_run(run: Run) -> list[str]:
    """A run in a few readable lines, the first one its counts."""
    summary = run.summary or {}
    if run.kind == "ingest":
        return describe_ingest(summary)
    if run.kind in ("send", "batch"):  # a worker's batch has a send's summary
        return describe_send(summary)
    if run.kind == "task":
        return [f"{summary.get('task', 'a task')} failed for good: {summary.get('error', '?')}"]
    if run.kind == "plan":
        return describe_plan(summary)
    return [", ".join(_scalars(summary, set())) or "(no counts)"]


def run_fields(run: Run) -> dict[str, Any]:
    """A run's id, kind, status and the counts of its summary, for its log line."""
    fields: dict[str, Any] = {"run": run.id, "kind": run.kind, "status": run.status}
    for key, value in (run.summary or {}).items():
        if key in WORDS or (isinstance(value, int) and not isinstance(value, bool)):
            fields[key] = value
    return fields


def log_run_started(logger: logging.Logger, run: Run) -> None:
    """`send.started run=12 kind=send status=running`: call right after the run's row is
    committed (the event is the run's kind: ingest, plan, send)."""
    event(logger, f"{run.kind}.started", stacklevel=2, **run_fields(run))


def log_run_finished(logger: logging.Logger, run: Run) -> None:
    """`send.finished run=12 kind=send status=ok digest_date=2026-12-03 sent=3 skipped=1 ...`,
    with its duration; WARNING when the run failed or was interrupted."""
    level = logging.WARNING if run.status in ("failed", "interrupted") else logging.INFO
    fields = run_fields(run)
    if run.finished_at is not None:
        fields["seconds"] = round((run.finished_at - run.started_at).total_seconds(), 3)
    event(logger, f"{run.kind}.finished", level=level, stacklevel=2, **fields)
