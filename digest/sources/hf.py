"""Hugging Face Daily Papers: the API's JSON listing parsed into papers, and its fetch."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from digest.papers import PaperIn, normalize_arxiv_id
from digest.sources import BadResponse, ParseResult, add_unique, as_text, looks_like_html, snippet
from digest.sources.http import HttpClient, Response

HF_DAILY_PAPERS_URL = "https://huggingface.co/api/daily_papers"


def _item_paper(item: dict[str, Any]) -> PaperIn:
    paper = item.get("paper")
    if not isinstance(paper, dict):
        raise ValueError("no 'paper' object")
    raw_id = str(paper.get("id") or "").strip()
    if not raw_id:
        raise ValueError("no paper id")
    arxiv_id = normalize_arxiv_id(raw_id)
    authors = [
        a.get("name", "") if isinstance(a, dict) else str(a) for a in paper.get("authors") or []
    ]
    repo = paper.get("githubRepo")
    return PaperIn.model_validate(
        {
            "id": arxiv_id or raw_id,
            "title": paper.get("title") or item.get("title") or "",
            "abstract": paper.get("summary") or item.get("summary") or "",
            "authors": authors,
            "published": paper.get("publishedAt") or item.get("publishedAt"),
            "url": f"https://arxiv.org/abs/{arxiv_id}"
            if arxiv_id
            else f"https://huggingface.co/papers/{raw_id}",
            "upvotes": paper.get("upvotes"),
            "comments": item.get("numComments"),
            "source": "hf",
            # The day HF listed it: when a digest reader could first have seen it.
            "first_seen": paper.get("submittedOnDailyAt"),
            "github_repo": repo if isinstance(repo, str) and repo.strip() else None,
            "github_stars": paper.get("githubStars"),
            "ai_summary": paper.get("ai_summary") or None,
            "ai_keywords": paper.get("ai_keywords") or [],
        }
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "paper"
        return f"{where}: {first['msg']}"
    return str(exc)


def parse_hf_daily(raw: bytes | str) -> ParseResult:
    """The papers of one Daily Papers API response; bad items are reported, good ones kept."""
    text = as_text(raw)
    if not text.strip():
        raise BadResponse("empty body instead of a JSON list")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if looks_like_html(text):
            raise BadResponse(f"an HTML page instead of JSON (starts {snippet(text)!r})") from exc
        at_end = exc.pos >= len(text.rstrip()) - 1 and exc.msg != "Extra data"
        if at_end or exc.msg.startswith("Unterminated"):
            raise BadResponse(
                f"truncated JSON: the body ends at character {len(text)} mid-document"
            ) from exc
        raise BadResponse(f"not valid JSON: {exc.msg} at character {exc.pos}") from exc
    if isinstance(data, dict):
        message = data.get("error") or data.get("message") or ", ".join(sorted(data)[:5])
        raise BadResponse(f"expected a JSON list of papers, got an object ({message})")
    if not isinstance(data, list):
        raise BadResponse(f"expected a JSON list of papers, got {type(data).__name__}")
    result = ParseResult()
    seen: dict[str, int] = {}
    for number, item in enumerate(data, start=1):
        where = f"item {number}"
        if not isinstance(item, dict):
            result.errors.append(f"{where}: not an object")
            continue
        paper_obj = item.get("paper")
        if isinstance(paper_obj, dict) and paper_obj.get("id"):
            where += f" ({paper_obj['id']})"
        try:
            paper = _item_paper(item)
        except (ValidationError, ValueError, TypeError) as exc:
            result.errors.append(f"{where}: {_describe(exc)}")
            continue
        if not paper.abstract:
            result.notes.append(f"{where}: no abstract, kept without one")
        add_unique(result, paper, where, seen)
    if not data:
        result.notes.append("the listing is empty (no papers submitted for that day yet)")
    return result


def fetch_hf_daily(
    client: HttpClient,
    *,
    day: dt.date | None,
    limit: int = 100,
    max_pages: int = 5,
    url: str = HF_DAILY_PAPERS_URL,
) -> Iterator[Response]:
    """The day's listing (the latest day when `day` is None), page by page until a short page."""
    for page in range(max_pages):
        params: dict[str, Any] = {"limit": limit, "p": page, "sort": "publishedAt"}
        if day is not None:
            params["date"] = day.isoformat()
        response = client.get(url, params=params)
        yield response
        try:
            count = len(json.loads(response.body))
        except (ValueError, TypeError):
            break  # the parser says what is wrong with it
        if count < limit:
            break
