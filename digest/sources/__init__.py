"""Paper sources: fetching over HTTP (digest.sources.http) kept apart from pure parsers.

Each parser takes a raw response body and returns a ParseResult: the papers it could read, the
items it had to drop (errors) and the things it kept with a caveat (notes). A body that cannot
be read at all (truncated JSON, an HTML error page, malformed XML) raises BadResponse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from digest.papers import PaperIn
from digest.paperstore import merge_row, paper_in, paper_row


class BadResponse(ValueError):
    """A response body that holds no readable listing at all: the message says why."""


@dataclass
class ParseResult:
    papers: list[PaperIn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # items dropped, and why
    notes: list[str] = field(default_factory=list)  # items kept with a caveat; empty-feed reasons


def as_text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return raw


def looks_like_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith(("<!doctype html", "<html")) or "<html" in head


def snippet(text: str, length: int = 80) -> str:
    flat = " ".join(text.split())
    return flat[:length] + ("..." if len(flat) > length else "")


def add_unique(result: ParseResult, paper: PaperIn, where: str, seen: dict[str, int]) -> None:
    """Append `paper`, folding a repeated id into the first occurrence by the store's merge rule."""
    index = seen.get(paper.id)
    if index is None:
        seen[paper.id] = len(result.papers)
        result.papers.append(paper)
        return
    row = paper_row(result.papers[index])
    merge_row(row, paper_row(paper))
    result.papers[index] = paper_in(row)
    result.notes.append(f"{where}: duplicate id {paper.id} in the same response, merged into one")


__all__ = ["BadResponse", "ParseResult", "PaperIn"]
