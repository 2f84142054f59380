"""Fast paper upserts for large imports: one Core multi-row INSERT for the ids the store does not
have yet, and the ORM merge (services._merge semantics) only for the ids it already has."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
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
        found.update(session.execute(select(Paper.id).where(col(Paper.id).in_(chunk))).scalars())
    return found


def insert_new(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Insert rows whose id is not stored yet; returns the ids actually inserted.

    ON CONFLICT DO NOTHING makes a row that another writer stored meanwhile a no-op instead of
    an error; the caller merges those like any known paper.
    """
    if not rows:
        return set()
    table = Paper.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        statement = (
            module.insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
        )
        return set(session.execute(statement, rows).scalars())
    session.execute(insert(table), rows)
    return {row["id"] for row in rows}


def bulk_upsert_papers(
    *, session: Session, papers: Iterable[PaperIn], now: dt.datetime
) -> tuple[int, int, int]:
    """(new, updated, unchanged) after inserting unknown ids in bulk and merging known ones."""
    from digest import services  # the merge rules live with upsert_papers

    batch = merge_duplicates(papers)
    stored = known_ids(session, list(batch))
    rows = [new_paper_row(p, now) for paper_id, p in batch.items() if paper_id not in stored]
    inserted = insert_new(session, rows)
    session.commit()
    to_merge = [paper for paper_id, paper in batch.items() if paper_id not in inserted]
    if not to_merge:
        return len(inserted), 0, 0
    result = services.upsert_papers(session=session, papers=to_merge, now=now)
    # A paper that raced in between is merged here; it was not new to this import.
    return len(inserted) + result.new, result.updated, result.unchanged
