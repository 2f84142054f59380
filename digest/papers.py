"""The project's paper format (JSON Lines, one paper a line): validation, ids, reading, writing."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

_ARXIV_NEW = re.compile(r"^(\d{4}\.\d{4,5})(v\d+)?$")
_ARXIV_OLD = re.compile(r"^([a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?$")
_TAG = re.compile(r"<[^>]{1,200}>")


_NEWLINE_TAB = str.maketrans("", "", "\n\t")


ModelT = TypeVar("ModelT", bound=BaseModel)


def clean_text(value: str) -> str:
    """Unicode-normalised text with markup tags and runs of whitespace removed."""
    value = unicodedata.normalize("NFKC", value)
    if "<" in value:
        value = _TAG.sub(" ", value)
    if "&" in value:
        value = html.unescape(value)
    # The per-character filter is the slow part of a bulk import; str.isprintable() is False
    # whenever a control/format character is present, so clean text skips the filter.
    if not value.translate(_NEWLINE_TAB).isprintable():
        value = "".join(ch for ch in value if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    # str.split() splits on exactly the characters re's \s matches, and is faster.
    return " ".join(value.split())


def normalize_arxiv_id(raw: str) -> str | None:
    """The version-free arXiv id in `raw` (a bare id, `arXiv:` id or abs/pdf URL), else None."""
    value = raw.strip()
    for prefix in ("arXiv:", "arxiv:"):
        value = value.removeprefix(prefix)
    value = re.sub(r"^https?://(export\.)?arxiv\.org/(abs|pdf)/", "", value)
    value = value.removesuffix(".pdf")
    for pattern in (_ARXIV_NEW, _ARXIV_OLD):
        match = pattern.match(value)
        if match:
            return match.group(1)
    return None


def title_id(title: str) -> str:
    """A stable id for a paper that has none, derived from its normalised title."""
    key = clean_text(title).casefold()
    key = re.sub(r"[^\w]+", " ", key).strip()
    return "t-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _parse_datetime(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace("Z", "+00:00")
        parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


class PaperIn(BaseModel):
    """One paper as it enters the system, from a file or a source; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = ""
    title: str
    abstract: str = Field(default="", validation_alias=AliasChoices("abstract", "summary"))
    authors: list[str] = Field(default_factory=list)
    published: dt.datetime | None = None
    url: str | None = Field(default=None, validation_alias=AliasChoices("url", "abs"))
    categories: list[str] = Field(default_factory=list)
    upvotes: int | None = Field(default=None, ge=0)
    comments: int | None = Field(default=None, ge=0)
    source: str | None = None
    first_seen: dt.datetime | None = None
    github_repo: str | None = None
    github_stars: int | None = Field(default=None, ge=0)
    ai_summary: str | None = None
    ai_keywords: list[str] = Field(default_factory=list)
    comment: str | None = None

    @field_validator("title", mode="after")
    @classmethod
    def _title(cls, value: str) -> str:
        value = clean_text(value)
        if not value:
            raise ValueError("title is empty")
        return value[:1000]

    @field_validator("abstract", "comment", "ai_summary", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return clean_text(value) if isinstance(value, str) else value

    @field_validator("authors", mode="before")
    @classmethod
    def _authors(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in re.split(r",| and ", value)]
        names = []
        for author in value:
            name = author.get("name", "") if isinstance(author, dict) else str(author)
            name = clean_text(name)
            if name:
                names.append(name)
        return names

    @field_validator("categories", "ai_keywords", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if value is None:
            return []
        return [clean_text(str(item)) for item in value if str(item).strip()]

    @field_validator("published", "first_seen", mode="before")
    @classmethod
    def _datetime(cls, value: Any) -> Any:
        return _parse_datetime(value)

    @field_validator("id", mode="after")
    @classmethod
    def _id(cls, value: str) -> str:
        value = value.strip()
        return normalize_arxiv_id(value) or value

    def model_post_init(self, _context: Any) -> None:
        if not self.id:
            self.id = title_id(self.title)


def paper_to_json(paper: PaperIn) -> dict[str, Any]:
    data = paper.model_dump(mode="json", exclude_none=True)
    return {key: value for key, value in data.items() if value != []}


@dataclass(frozen=True)
class BadLine:
    line_number: int
    error: str


def read_json_lines(
    lines: Iterable[str], model: type[ModelT], what: str
) -> Iterator[ModelT | BadLine]:
    """Each line as a `model`, or a BadLine saying why it could not be read (`what` names the
    thing in errors); blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("a line must hold one JSON object")
            yield model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or what
            yield BadLine(number, f"{where}: {first['msg']}")
        except ValueError as exc:
            yield BadLine(number, str(exc))


def read_papers(lines: Iterable[str]) -> Iterator[PaperIn | BadLine]:
    """Each line's paper, or a BadLine saying why it could not be read; blank lines are skipped."""
    return read_json_lines(lines, PaperIn, "paper")


def write_papers(papers: Iterable[PaperIn], out: IO[str]) -> int:
    count = 0
    for paper in papers:
        out.write(json.dumps(paper_to_json(paper), ensure_ascii=False) + "\n")
        count += 1
    return count
