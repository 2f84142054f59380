"""The paper store: one field mapping between PaperIn and a Paper row, one merge rule for the
same paper id, one upsert path (bulk rows, no ORM objects), and the reads built on them:
import, seeds, the candidate window, export and topic suggestions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.config import Settings
from digest.models import Paper
from digest.papers import BadLine, OversizeLine, PaperIn, read_papers
from digest.suggestions import suggest_topics

Progress = Callable[[int], None]
Row = dict[str, Any]

_ID_CHUNK = 500
# Fields copied as they are between PaperIn and the Paper row (lists are copied).
_SAME_FIELDS = (
    "id",
    "title",
    "abstract",
    "authors",
    "published",
    "first_seen",
    "url",
    "categories",
    "upvotes",
    "comments",
    "github_repo",
    "github_stars",
    "ai_summary",
    "ai_keywords",
    "comment",
)
_FIRST_KNOWN = ("url", "comment", "ai_summary", "github_repo", "published")
_LATEST_COUNT = ("upvotes", "comments", "github_stars")
_UNION = ("categories", "ai_keywords", "sources")


# ---------------------------------------------------------------------------------------------
# The mapping and the merge rule (pure)


def paper_row(paper: PaperIn) -> Row:
    """The Paper row fields of `paper`; first_seen stays None when the input has none (the
    store fills it in with the time of the insert)."""
    row = {name: getattr(paper, name) for name in _SAME_FIELDS}
    for name in ("authors", "categories", "ai_keywords"):
        row[name] = list(row[name])
    row["sources"] = [paper.source] if paper.source else []
    return row


def paper_in(row: Mapping[Any, Any]) -> PaperIn:
    """The PaperIn of a stored row (the export format): its sources joined by commas."""
    fields = {name: row[name] for name in _SAME_FIELDS}
    return PaperIn(**fields, source=",".join(row["sources"]) or None)


def merge_row(row: Row, incoming: Mapping[str, Any]) -> bool:
    """Fold `incoming` (a row of the same paper id) into `row`; True if `row` changed.

    The one rule for a paper seen twice, in the store or in one input: the longer abstract
    wins; links, comment, summary, repository and publication date keep the first known value;
    counts take the latest observation; authors are kept once known; categories, keywords and
    sources are united in order; first_seen is the earliest sighting.
    """
    changes: Row = {}
    if len(incoming["abstract"]) > len(row["abstract"]):
        changes["abstract"] = incoming["abstract"]
    for name in _FIRST_KNOWN:
        if incoming[name] is not None and row[name] is None:
            changes[name] = incoming[name]
    for name in _LATEST_COUNT:
        if incoming[name] is not None:
            changes[name] = incoming[name]
    if incoming["authors"] and not row["authors"]:
        changes["authors"] = list(incoming["authors"])
    for name in _UNION:
        changes[name] = list(dict.fromkeys([*row[name], *incoming[name]]))
    seen = incoming["first_seen"]
    if seen is not None and (row["first_seen"] is None or seen < row["first_seen"]):
        changes["first_seen"] = seen
    changed = {name: value for name, value in changes.items() if row[name] != value}
    row.update(changed)
    return bool(changed)


def fold_duplicates(papers: Iterable[PaperIn]) -> dict[str, Row]:
    """One row per paper id, each later occurrence merged into the first by merge_row."""
    batch: dict[str, Row] = {}
    for paper in papers:
        row = paper_row(paper)
        first = batch.get(paper.id)
        if first is None:
            batch[paper.id] = row
        else:
            merge_row(first, row)
    return batch


# ---------------------------------------------------------------------------------------------
# Writes


@dataclass
class UpsertResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _known_ids(session: Session, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        statement = core_select(col(Paper.id)).where(col(Paper.id).in_(chunk))
        found.update(session.execute(statement).scalars())
    return found


def insert_new(session: Session, rows: list[Row]) -> set[str]:
    """Insert rows whose id was not stored a moment ago; returns the ids actually inserted.

    Another writer may store one of these ids meanwhile. INSERT ... ON CONFLICT DO NOTHING
    RETURNING id turns that into a no-op the caller merges like any known paper. It is fast on
    SQLite, but several times slower than a plain executemany on PostgreSQL, so there the plain
    INSERT is tried first in a savepoint and the exact statement is the fallback on a conflict.
    """
    if not rows:
        return set()
    table = Paper.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    if dialect != "sqlite":
        try:
            with session.begin_nested():
                session.execute(insert(table), rows)
            return {row["id"] for row in rows}
        except IntegrityError:
            if dialect != "postgresql":
                raise
    module = sqlite if dialect == "sqlite" else postgresql
    statement = (
        module.insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
    )
    return set(session.execute(statement, rows).scalars())


def _merge_known(
    session: Session, batch: dict[str, Row], ids: list[str], now: dt.datetime
) -> tuple[int, int]:
    """(updated, unchanged): fold `batch[id]` into each stored paper, write the changed ones."""
    table = Paper.__table__  # type: ignore[attr-defined]
    columns = [c.name for c in table.columns if c.name != "id"]
    changed: list[Row] = []
    unchanged = 0
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        for stored in session.execute(core_select(table).where(table.c.id.in_(chunk))).mappings():
            row = dict(stored)
            if merge_row(row, batch[row["id"]]):
                row["updated_at"] = now
                changed.append({"paper_id": row["id"], **{c: row[c] for c in columns}})
            else:
                unchanged += 1
    if changed:
        statement = (
            update(table)
            .where(table.c.id == bindparam("paper_id"))
            .values({c: bindparam(c) for c in columns})
        )
        session.execute(statement, changed)
    return len(changed), unchanged


def upsert_papers(*, session: Session, papers: Iterable[PaperIn], now: dt.datetime) -> UpsertResult:
    """Insert the unknown ids in bulk and merge the known ones (merge_row); commits once.

    Plain rows, no ORM objects: on a large import they cost more than the parsing.
    """
    batch = fold_duplicates(papers)
    stored = _known_ids(session, list(batch))
    rows = [
        {**row, "first_seen": row["first_seen"] or now, "updated_at": now}
        for paper_id, row in batch.items()
        if paper_id not in stored
    ]
    inserted = insert_new(session, rows)
    # Known ids, and any that another writer stored between our SELECT and INSERT.
    to_merge = [paper_id for paper_id in batch if paper_id not in inserted]
    updated, unchanged = _merge_known(session, batch, to_merge, now) if to_merge else (0, 0)
    session.commit()
    return UpsertResult(new=len(inserted), updated=updated, unchanged=unchanged)


@dataclass
class ImportReport:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.new + self.updated + self.unchanged


def import_papers(
    *,
    session: Session,
    lines: Iterable[str | bytes | OversizeLine],
    now: dt.datetime,
    batch_size: int = 2000,
    progress: Progress | None = None,
) -> ImportReport:
    """Import a JSON Lines paper file; bad lines are reported and skipped, good ones kept."""
    report = ImportReport()
    pending: list[PaperIn] = []

    def flush() -> None:
        result = upsert_papers(session=session, papers=pending, now=now)
        report.new += result.new
        report.updated += result.updated
        report.unchanged += result.unchanged
        if progress:
            progress(len(pending))
        pending.clear()

    for item in read_papers(lines):
        if isinstance(item, BadLine):
            report.bad_lines.append(item)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return report


def papers_changed_at(*, session: Session) -> dt.datetime | None:
    """When a paper was last stored or changed (None for an empty store): what a digest
    skipped for want of papers, or a prepared corpus, is compared with."""
    changed: dt.datetime | None = session.execute(
        core_select(func.max(col(Paper.updated_at)))
    ).scalar()
    return changed


def has_papers(*, session: Session) -> bool:
    return session.exec(select(Paper.id).limit(1)).first() is not None


def load_seeds(*, session: Session, settings: Settings, now: dt.datetime) -> ImportReport:
    path = settings.seeds_dir / "papers.jsonl"
    with path.open(encoding="utf-8") as handle:
        return import_papers(session=session, lines=handle, now=now)


# ---------------------------------------------------------------------------------------------
# Reads


def candidate_papers(*, session: Session, as_of: dt.datetime, days: int) -> list[Paper]:
    """Papers first listed or published within `days` before `as_of`, by id.

    The order is fixed so that every caller (the send, the preview) ranks the same corpus the
    same way, whatever order the database would return.
    """
    since = as_of - dt.timedelta(days=days)
    statement = (
        select(Paper)
        .where(
            ((col(Paper.first_seen) >= since) & (col(Paper.first_seen) <= as_of))
            | ((col(Paper.published) >= since) & (col(Paper.published) <= as_of))
        )
        .order_by(col(Paper.id))
    )
    return list(session.exec(statement))


def export_papers(*, session: Session) -> Iterator[PaperIn]:
    """Every stored paper in the paper format, oldest sighting first."""
    table = Paper.__table__  # type: ignore[attr-defined]
    statement = core_select(table).order_by(table.c.first_seen, table.c.id)
    for row in session.execute(statement).mappings():
        yield paper_in(row)


def topic_suggestions(*, session: Session, limit: int = 24, recent: int = 3000) -> list[str]:
    """Phrases that recur across the most recently seen papers, for the subscribe page."""
    rows = session.exec(
        select(Paper.title, Paper.ai_keywords).order_by(col(Paper.first_seen).desc()).limit(recent)
    )
    return suggest_topics(((title, keywords or []) for title, keywords in rows), limit=limit)
