"""Factories for test data: one place that knows what a valid paper or profile looks like."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from digest.papers import PaperIn
from digest.ranking import Profile, RankPaper

NOW = dt.datetime(2026, 6, 12, 8, 0, tzinfo=dt.UTC)
_counter = itertools.count(1)


def make_paper(**overrides: Any) -> PaperIn:
    n = next(_counter)
    data: dict[str, Any] = {
        "id": f"2606.{n:05d}",
        "title": f"A study of topic {n}",
        "abstract": f"We study topic {n} with careful experiments.",
        "authors": ["Ada Lovelace", "Alan Turing"],
        "published": NOW - dt.timedelta(days=1),
        "url": f"https://arxiv.org/abs/2606.{n:05d}",
    }
    data.update(overrides)
    return PaperIn.model_validate(data)


def make_rank_paper(**overrides: Any) -> RankPaper:
    n = next(_counter)
    data: dict[str, Any] = {
        "id": f"r{n}",
        "title": f"Unrelated note number {n}",
        "abstract": "Nothing in particular is studied here.",
        "published": NOW - dt.timedelta(days=1),
    }
    data.update(overrides)
    return RankPaper(**data)


def make_profile(**overrides: Any) -> Profile:
    data: dict[str, Any] = {"id": "p1", "topics": ("diffusion models",)}
    data.update(overrides)
    return Profile(**data)
