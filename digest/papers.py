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
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

_ARXIV_NEW = re.compile(r"^(\d{4}\.\d{4,5})(v\d+)?$")
_ARXIV_OLD = re.compile(r"^([a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?$")
_TAG = re.compile(r"<[^>]{1,200}>")

# Caps on what one line of a paper file may hold. A real paper line is a few kB; arXiv caps an
# abstract at 1,920 characters and the longest author lists (collaborations) run to thousands.
MAX_LINE_BYTES = 1_000_000
MAX_TEXT_CHARS = 20_000
MAX_NAME_CHARS = 500
MAX_AUTHORS = 5_000
MAX_LABELS = 100
MAX_URL_CHARS = 2_000
_READ_CHUNK = 64 * 1024


_NEWLINE_TAB = str.maketrans("", "", "\n\t")


ModelT = TypeVar("ModelT", bound=BaseModel)


def clean_text(value: str) -> str:
    """Unicode-normalised text with markup tags and runs of whitespace removed."""
    value = unicodedata.normalize("NFKC", value)
    # Entities first: `&lt;script&gt;` is markup once decoded, and must go with the other tags
    # rather than reach a Subject or a text part as `<script>`.
    if "&" in value:
        value = html.unescape(value)
    if "<" in value:
        value = _TAG.sub(" ", value)
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


def safe_url(value: object) -> str | None:
    """`value` if it is an absolute http(s) URL that can go in an href as it is, else None.

    Anything else (javascript:, data:, vbscript:, relative or protocol-relative URLs, control
    characters or spaces that browsers strip before reading the scheme) is refused: a link to
    a paper must never run script on the page that shows it.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        return None
    if not value.isascii() or not value.isprintable() or " " in value or "\\" in value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return value


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

    id: str = Field(default="", max_length=MAX_NAME_CHARS)
    title: str = Field(max_length=MAX_TEXT_CHARS)
    abstract: str = Field(
        default="",
        validation_alias=AliasChoices("abstract", "summary"),
        max_length=MAX_TEXT_CHARS,
    )
    authors: list[str] = Field(default_factory=list, max_length=MAX_AUTHORS)
    published: dt.datetime | None = None
    url: str | None = Field(
        default=None, validation_alias=AliasChoices("url", "abs"), max_length=MAX_URL_CHARS
    )
    categories: list[str] = Field(default_factory=list, max_length=MAX_LABELS)
    upvotes: int | None = Field(default=None, ge=0)
    comments: int | None = Field(default=None, ge=0)
    source: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    first_seen: dt.datetime | None = None
    github_repo: str | None = Field(default=None, max_length=MAX_URL_CHARS)
    github_stars: int | None = Field(default=None, ge=0)
    ai_summary: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    ai_keywords: list[str] = Field(default_factory=list, max_length=MAX_LABELS)
    comment: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)

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

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        # Only http(s) links are kept. Anything else is dropped, not the paper: the URL is
        # optional (a digest then links to the paper's page on our site), and the same model
        # reads `digest rank` files and sources, where losing a paper over its link would
        # change the picks.
        if isinstance(value, str):
            return safe_url(value.strip())
        return value

    @field_validator("authors", mode="before")
    @classmethod
    def _authors(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in re.split(r",| and ", value)]
        if not isinstance(value, list):
            raise ValueError("must be a list of names or a comma-separated string")
        names = []
        for author in value:
            name = author.get("name", "") if isinstance(author, dict) else author
            if not isinstance(name, str | int | float):
                raise ValueError("each author must be a name or an object with a name")
            # Cut, like a long title, rather than refused: real feeds hold run-together author
            # lists in one name (a 512-character one in the 75k corpus).
            name = clean_text(str(name)[: MAX_NAME_CHARS * 4])[:MAX_NAME_CHARS]
            if name:
                names.append(name)
        return names

    @field_validator("categories", "ai_keywords", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("must be a list of strings")
        labels = []
        for item in value:
            if not isinstance(item, str | int | float):
                raise ValueError("must be a list of strings")
            label = clean_text(str(item)[: MAX_NAME_CHARS * 4])[:MAX_NAME_CHARS]
            if label:
                labels.append(label)
        return labels

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


@dataclass(frozen=True)
class OversizeLine:
    """A line longer than the cap, skipped without being held in memory."""

    size: int  # bytes


class ByteLines(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def read_lines(
    stream: ByteLines, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[bytes | OversizeLine]:
    """Each line of a binary stream (a file, a GzipFile), or an OversizeLine in place of one
    longer than `max_bytes`: memory stays bounded whatever the file holds, a 200 MB line in a
    small gzip included."""
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(_READ_CHUNK)
            if not line:
                break
            size += len(line)
        yield OversizeLine(size)


def _decode_line(line: str | bytes | OversizeLine) -> str:
    if isinstance(line, OversizeLine):
        raise ValueError(
            f"line is {line.size:,} bytes, over the limit of {MAX_LINE_BYTES:,}: skipped"
        )
    if isinstance(line, bytes):
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not valid UTF-8 (byte {exc.start + 1} of the line)") from None
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"line is over the limit of {MAX_LINE_BYTES:,} characters: skipped")
    return line


def read_json_lines(
    lines: Iterable[str | bytes | OversizeLine], model: type[ModelT], what: str
) -> Iterator[ModelT | BadLine]:
    """Each line as a `model`, or a BadLine saying why it could not be read (`what` names the
    thing in errors); blank lines are skipped. Lines may be text, or bytes from read_lines."""
    for number, raw in enumerate(lines, start=1):
        try:
            line = _decode_line(raw)
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except RecursionError:
                raise ValueError("JSON nested too deeply") from None
            if not isinstance(data, dict):
                raise ValueError("a line must hold one JSON object")
            yield model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or what
            yield BadLine(number, f"{where}: {first['msg']}")
        except RecursionError:
            yield BadLine(number, f"{what}: a value is nested too deeply")
        except (ValueError, TypeError) as exc:
            yield BadLine(number, str(exc) or type(exc).__name__)


def read_papers(lines: Iterable[str | bytes | OversizeLine]) -> Iterator[PaperIn | BadLine]:
    """Each line's paper, or a BadLine saying why it could not be read; blank lines are skipped."""
    return read_json_lines(lines, PaperIn, "paper")


def write_papers(papers: Iterable[PaperIn], out: IO[str]) -> int:
    count = 0
    for paper in papers:
        out.write(json.dumps(paper_to_json(paper), ensure_ascii=False) + "\n")
        count += 1
    return count
