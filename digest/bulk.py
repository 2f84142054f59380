"""Fast paper upserts for large imports: one Core multi-row INSERT for the ids the store does not
have yet, and for the ids it has, the merge rules of services._merge applied to plain rows with
an UPDATE only for the papers that changed (no ORM objects: they cost more than the parsing)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from digest.models import Paper
from digest.papers import PaperIn

_ID_CHUNK = 500


def merge_duplicates(papers: Iterable[PaperIn]) -> dict[str, PaperIn]:
    """One PaperIn per id, the later non-empty fields folded into the first (as upsert does)."""
    batch: dict[str, PaperIn] = {}
    for paper in papers:
        first = batch.get(paper.id)
        if first is None:
            batch[paper.id] = paper
        else:
            richer = {k: v for k, v in paper.model_dump().items() if v not in (None, [], "")}
            batch[paper.id] = first.model_copy(update=richer)
    return batch


def new_paper_row(paper: PaperIn, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": paper.id,
        "title": paper.title,
        "abstract": paper.abstract,
        "authors": list(paper.authors),
        "published": paper.published,
        "first_seen": paper.first_seen or now,
        "updated_at": now,
        "url": paper.url,
        "categories": list(paper.categories),
        "upvotes": paper.upvotes,
        "comments": paper.comments,
        "github_repo": paper.github_repo,
        "github_stars": paper.github_stars,
        "ai_summary": paper.ai_summary,
        "ai_keywords": list(paper.ai_keywords),
        "comment": paper.comment,
        "sources": [paper.source] if paper.source else [],
    }


def known_ids(session: Session, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        statement = select(col(Paper.id)).where(col(Paper.id).in_(chunk))
        found.update(session.execute(statement).scalars())
    return found


def insert_new(session: Session, rows: list[dict[str, Any]]) -> set[str]:
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


def merge_known(
    session: Session, batch: dict[str, PaperIn], ids: list[str], now: dt.datetime
) -> tuple[int, int]:
    """(updated, unchanged): fold `batch[id]` into each stored paper, write the changed ones."""
    from digest import services  # the merge rules live with upsert_papers

    table = Paper.__table__  # type: ignore[attr-defined]
    columns = [c.name for c in table.columns if c.name != "id"]
    changed: list[dict[str, Any]] = []
    unchanged = 0
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        for row in session.execute(select(table).where(table.c.id.in_(chunk))).mappings():
            paper = SimpleNamespace(**row)
            if services._merge(cast(Paper, paper), batch[row["id"]], now):
                changed.append({"paper_id": row["id"], **{c: getattr(paper, c) for c in columns}})
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


def bulk_upsert_papers(
    *, session: Session, papers: Iterable[PaperIn], now: dt.datetime
) -> tuple[int, int, int]:
    """(new, updated, unchanged) after inserting unknown ids in bulk and merging known ones.

    Commits once at the end.
    """
    batch = merge_duplicates(papers)
    stored = known_ids(session, list(batch))
    rows = [new_paper_row(p, now) for paper_id, p in batch.items() if paper_id not in stored]
    inserted = insert_new(session, rows)
    # Known ids, and any that another writer stored between our SELECT and INSERT.
    to_merge = [paper_id for paper_id in batch if paper_id not in inserted]
    updated, unchanged = merge_known(session, batch, to_merge, now) if to_merge else (0, 0)
    session.commit()
    return len(inserted), updated, unchanged
