"""The `digest rank` file formats: paper and profile JSON Lines in, one result line per profile out.

Reading is separate from ranking: each reader yields parsed items or a `BadLine` saying what is
wrong, so the command can report bad lines and rank the good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from digest.papers import BadLine, PaperIn, read_json_lines, read_papers
from digest.ranking import Pick, Profile, RankPaper


class ProfileIn(BaseModel):
    """One line of PROFILES.jsonl; every key but `id` is optional."""

    model_config = ConfigDict(extra="forbid")

    id: str
    topics: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    liked: list[PaperIn] = Field(default_factory=list)
    disliked: list[PaperIn] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        # Numeric ids are common in exported profiles; booleans are a mistake.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("id is empty")
        return value

    def to_profile(self) -> Profile:
        return Profile(
            id=self.id,
            topics=tuple(t for t in self.topics if t.strip()),
            exclude=tuple(t for t in self.exclude if t.strip()),
            liked=tuple(RankPaper.of(p) for p in self.liked),
            disliked=tuple(RankPaper.of(p) for p in self.disliked),
        )


def read_rank_papers(lines: Iterable[str]) -> Iterator[RankPaper | BadLine]:
    for item in read_papers(lines):
        yield item if isinstance(item, BadLine) else RankPaper.of(item)


def read_profiles(lines: Iterable[str]) -> Iterator[Profile | BadLine]:
    """Each line's profile, or a BadLine saying why it could not be read; blank lines skipped."""
    for item in read_json_lines(lines, ProfileIn, "profile"):
        yield item if isinstance(item, BadLine) else item.to_profile()


def result_line(profile: Profile, picks: Sequence[Pick]) -> str:
    """The output line for one profile: best pick first."""
    results = [{"id": p.paper_id, "score": p.score, "why": p.why} for p in picks]
    return json.dumps({"profile": profile.id, "results": results}, ensure_ascii=False)
