"""arXiv: the API (Atom, by category and date range) and the RSS listing of new announcements,
parsed into papers, and their fetches within arXiv's terms (one request every 3 s, one
connection).

XML is parsed with defusedxml: these bodies come from the network, and the stdlib parser
would expand entity bombs or resolve external entities.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, cast

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from pydantic import ValidationError

from digest.papers import PaperIn, normalize_arxiv_id
from digest.sources import BadResponse, ParseResult, add_unique, as_text, looks_like_html, snippet
from digest.sources.http import HttpClient, Response

ARXIV_API_URL = "https://export.arxiv.org/api/query"
ARXIV_RSS_URL = "https://rss.arxiv.org/rss/"
ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV = "{http://arxiv.org/schemas/atom}"
DC = "{http://purl.org/dc/elements/1.1/}"
_RSS_DESCRIPTION = re.compile(
    r"^\s*arXiv:(?P<id>\S+)\s+Announce Type:\s*(?P<type>[\w-]+)\s*(Abstract:\s*)?(?P<abstract>.*)$",
    re.DOTALL,
)
# Replacements are new versions of papers announced before: they update what we store but
# are not news, so they are not listed as new papers.
SKIPPED_ANNOUNCE_TYPES = frozenset({"replace", "replace-cross"})


def _parse_xml(raw: bytes | str, expected: str) -> ET.Element:
    text = as_text(raw)
    if not text.strip():
        raise BadResponse(f"empty body instead of an {expected} document")
    if looks_like_html(text):
        raise BadResponse(f"an HTML page instead of {expected} (starts {snippet(text)!r})")
    try:
        return cast(ET.Element, fromstring(raw.encode("utf-8") if isinstance(raw, str) else raw))
    except DefusedXmlException as exc:
        raise BadResponse(f"refused unsafe XML ({type(exc).__name__})") from exc
    except ET.ParseError as exc:
        raise BadResponse(f"not well-formed XML ({exc}); truncated or not {expected}?") from exc


def _text(element: ET.Element | None) -> str:
    return "".join(element.itertext()) if element is not None else ""


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "paper"
        return f"{where}: {first['msg']}"
    return str(exc)


def _atom_entry(entry: ET.Element) -> PaperIn:
    raw_id = _text(entry.find(f"{ATOM}id")).strip()
    arxiv_id = normalize_arxiv_id(raw_id)
    if arxiv_id is None:
        raise ValueError(f"no arXiv id in {raw_id!r}" if raw_id else "no id")
    primary = entry.find(f"{ARXIV}primary_category")
    categories = [primary.get("term", "")] if primary is not None else []
    categories += [c.get("term", "") for c in entry.findall(f"{ATOM}category")]
    categories = [c for c in dict.fromkeys(categories) if c]
    url = f"https://arxiv.org/abs/{arxiv_id}"
    return PaperIn.model_validate(
        {
            "id": arxiv_id,
            "title": _text(entry.find(f"{ATOM}title")),
            "abstract": _text(entry.find(f"{ATOM}summary")),
            "authors": [_text(a.find(f"{ATOM}name")) for a in entry.findall(f"{ATOM}author")],
            "published": _text(entry.find(f"{ATOM}published")).strip() or None,
            "url": url,
            "categories": categories,
            "comment": _text(entry.find(f"{ARXIV}comment")).strip() or None,
            "source": "arxiv",
        }
    )


def parse_arxiv_atom(raw: bytes | str) -> ParseResult:
    """The papers of one arXiv API (Atom) response, old (http) and new (https) formats alike."""
    root = _parse_xml(raw, "Atom")
    if root.tag != f"{ATOM}feed":
        raise BadResponse(f"expected an Atom <feed>, got <{root.tag}>")
    result = ParseResult()
    seen: dict[str, int] = {}
    entries = root.findall(f"{ATOM}entry")
    for number, entry in enumerate(entries, start=1):
        raw_id = _text(entry.find(f"{ATOM}id")).strip()
        if "/api/errors" in raw_id:
            # The API reports a bad query as a feed with one "Error" entry.
            raise BadResponse(f"arXiv API error: {_text(entry.find(f'{ATOM}summary')).strip()}")
        where = f"entry {number}" + (f" ({raw_id.rsplit('/', 1)[-1]})" if raw_id else "")
        try:
            paper = _atom_entry(entry)
        except (ValidationError, ValueError) as exc:
            result.errors.append(f"{where}: {_describe(exc)}")
            continue
        if not paper.abstract:
            result.notes.append(f"{where}: no abstract, kept without one")
        add_unique(result, paper, where, seen)
    if not entries:
        total = _text(root.find("{http://a9.com/-/spec/opensearch/1.1/}totalResults")).strip()
        result.notes.append(
            "the query matched no papers" + (f" (totalResults {total})" if total else "")
        )
    return result


def _rss_date(text: str) -> dt.datetime | None:
    try:
        return email.utils.parsedate_to_datetime(text.strip()).astimezone(dt.UTC)
    except (TypeError, ValueError):
        return None


def _rss_item(item: ET.Element, announced: dt.datetime | None) -> tuple[PaperIn, str]:
    description = _text(item.find("description"))
    match = _RSS_DESCRIPTION.match(description)
    guid = _text(item.find("guid")).strip().removeprefix("oai:arXiv.org:")
    raw_id = match.group("id") if match else guid or _text(item.find("link"))
    arxiv_id = normalize_arxiv_id(raw_id.strip()) if raw_id else None
    if arxiv_id is None:
        raise ValueError(f"no arXiv id in {raw_id!r}" if raw_id else "no id")
    announce_type = (
        _text(item.find(f"{ARXIV}announce_type")).strip()
        or (match.group("type") if match else "")
        or "new"
    )
    when = _rss_date(_text(item.find("pubDate"))) or announced
    paper = PaperIn.model_validate(
        {
            "id": arxiv_id,
            "title": _text(item.find("title")),
            "abstract": match.group("abstract") if match else description,
            # One string of names separated by commas; the paper format splits it.
            "authors": _text(item.find(f"{DC}creator")),
            "url": f"https://arxiv.org/abs/{arxiv_id}",
            "categories": [_text(c).strip() for c in item.findall("category")],
            "source": "arxiv",
            "first_seen": when,
        }
    )
    return paper, announce_type


def parse_arxiv_rss(raw: bytes | str) -> ParseResult:
    """The new announcements of one arXiv RSS feed (new and cross-listed papers)."""
    root = _parse_xml(raw, "RSS")
    channel = root.find("channel")
    if root.tag != "rss" or channel is None:
        raise BadResponse(f"expected an RSS <rss><channel>, got <{root.tag}>")
    announced = _rss_date(_text(channel.find("pubDate")))
    result = ParseResult()
    seen: dict[str, int] = {}
    skipped: dict[str, int] = {}
    items = channel.findall("item")
    for number, item in enumerate(items, start=1):
        where = f"item {number}"
        try:
            paper, announce_type = _rss_item(item, announced)
        except (ValidationError, ValueError) as exc:
            result.errors.append(f"{where}: {_describe(exc)}")
            continue
        where += f" ({paper.id})"
        if announce_type in SKIPPED_ANNOUNCE_TYPES:
            skipped[announce_type] = skipped.get(announce_type, 0) + 1
            continue
        if not paper.abstract:
            result.notes.append(f"{where}: no abstract, kept without one")
        add_unique(result, paper, where, seen)
    for kind, count in sorted(skipped.items()):
        result.notes.append(f"{count} {kind} announcement(s) of older papers not listed as new")
    if not items:
        result.notes.append(empty_feed_reason(channel, announced))
    return result


def empty_feed_reason(channel: ET.Element, announced: dt.datetime | None) -> str:
    skip_days = [_text(d).strip() for d in channel.findall("skipDays/day")]
    title = _text(channel.find("title")).strip() or "the feed"
    if announced is not None:
        # The feed's date is in arXiv's own zone (US Eastern): name the day it gives.
        raw = _text(channel.find("pubDate")).strip()
        local = email.utils.parsedate_to_datetime(raw) if raw else announced
        weekday = local.strftime("%A")
        if weekday in skip_days:
            return (
                f"{title}: no announcements on {weekday} {local.date().isoformat()} "
                f"(arXiv announces nothing on {' and '.join(skip_days)})"
            )
        return f"{title}: no new papers announced on {weekday} {local.date().isoformat()}"
    return f"{title}: no items"


def arxiv_query(category: str, day: dt.date) -> str:
    stamp = day.strftime("%Y%m%d")
    return f"cat:{category} AND submittedDate:[{stamp}0000 TO {stamp}2359]"


def fetch_arxiv_api(
    client: HttpClient,
    *,
    category: str,
    day: dt.date,
    page_size: int = 200,
    max_pages: int = 5,
    url: str = ARXIV_API_URL,
) -> Iterator[Response]:
    """Papers of `category` submitted on `day`, page by page (the client keeps the 3 s gap)."""
    for page in range(max_pages):
        params: dict[str, Any] = {
            "search_query": arxiv_query(category, day),
            "start": page * page_size,
            "max_results": page_size,
            "sortBy": "submittedDate",
            "sortOrder": "descending",
        }
        response = client.get(url, params=params)
        yield response
        if response.body.count(b"<entry") < page_size:
            break


def fetch_arxiv_rss(client: HttpClient, *, category: str, url: str = ARXIV_RSS_URL) -> Response:
    return client.get(url.rstrip("/") + "/" + category)
