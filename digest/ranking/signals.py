"""A paper's own signals and reasons: recency, trending, excluded terms, near-duplicates."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from digest.ranking.model import DAY, Profile, RankPaper


def recency(papers: Sequence[RankPaper], now: dt.datetime, half_life_days: float) -> np.ndarray:
    """1.0 for a paper from `now`, halving every half-life; 0 when the date is unknown."""
    out = np.zeros(len(papers), dtype=np.float64)
    for i, paper in enumerate(papers):
        when = paper.date
        if when is not None:
            age = max(0.0, (now - when).total_seconds() / DAY)
            out[i] = 0.5 ** (age / half_life_days)
    return out


def trending(papers: Sequence[RankPaper], reference: float) -> np.ndarray:
    """A 0..1 trending signal from upvotes and comments, on a log scale."""
    votes = np.array([(p.upvotes or 0) + 0.5 * (p.comments or 0) for p in papers], dtype=np.float64)
    return np.minimum(1.0, np.log1p(votes) / math.log1p(reference))


def _term_pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in term.casefold().split()]
    return re.compile(r"\b" + r"\s+".join(words) + r"\b")


def excluded_mask(
    papers: Sequence[RankPaper],
    profiles: Sequence[Profile],
    term_hits_cache: dict[str, list[int]] | None = None,
) -> sparse.csr_matrix:
    """(profiles x papers) boolean: True where a paper matches one of the profile's excluded terms.

    Each distinct term is matched once over the corpus (and remembered in `term_hits_cache`
    across batches), then combined per profile by a sparse product, so thousands of profiles
    sharing a few terms cost a few regex passes.
    """
    terms = sorted({t.strip().casefold() for p in profiles for t in p.exclude if t.strip()})
    if not terms:
        return sparse.csr_matrix((len(profiles), len(papers)), dtype=bool)
    cache = {} if term_hits_cache is None else term_hits_cache
    texts: list[str] | None = None
    term_index = {t: i for i, t in enumerate(terms)}
    rows, cols = [], []
    for j, term in enumerate(terms):
        if term not in cache:
            if texts is None:
                texts = [f"{p.title} {p.abstract}".casefold() for p in papers]
            pattern = _term_pattern(term)
            cache[term] = [i for i, text in enumerate(texts) if pattern.search(text)]
        rows.extend([j] * len(cache[term]))
        cols.extend(cache[term])
    term_hits = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(terms), len(papers))
    )
    prow, pcol = [], []
    for i, profile in enumerate(profiles):
        for t in {t.strip().casefold() for t in profile.exclude if t.strip()}:
            prow.append(i)
            pcol.append(term_index[t])
    owner = sparse.csr_matrix(
        (np.ones(len(prow), dtype=np.float32), (prow, pcol)), shape=(len(profiles), len(terms))
    )
    return (owner @ term_hits).astype(bool).tocsr()


def _age_phrase(paper: RankPaper, now: dt.datetime) -> str | None:
    when = paper.date
    if when is None:
        return None
    days = int(max(0.0, (now - when).total_seconds()) // DAY)
    if days == 0:
        return "new today"
    return "1 day old" if days == 1 else f"{days} days old"


def _paper_reasons(paper: RankPaper, now: dt.datetime) -> list[str]:
    """The parts of a reason that depend on the paper alone: trending and age."""
    parts = []
    if paper.upvotes:
        parts.append(f"{paper.upvotes} upvote" + ("" if paper.upvotes == 1 else "s"))
    if paper.comments:
        parts.append(f"{paper.comments} comment" + ("" if paper.comments == 1 else "s"))
    age = _age_phrase(paper, now)
    if age:
        parts.append(age)
    return parts


def _short_title(title: str, limit: int = 60) -> str:
    title = " ".join(title.split())
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "\u2026"


def near_duplicates(vectors: sparse.csr_matrix, threshold: float) -> dict[int, set[int]]:
    """Pairs of candidates at least `threshold` similar, computed once for every profile."""
    pairs: dict[int, set[int]] = {}
    if threshold > 1.0:
        return pairs
    vectors_t = vectors.T.tocsr()
    for start in range(0, vectors.shape[0], 1000):
        block = (vectors[start : start + 1000] @ vectors_t).tocoo()
        keep = (block.data >= threshold) & (block.row + start != block.col)
        for i, j in zip(block.row[keep] + start, block.col[keep], strict=True):
            pairs.setdefault(int(i), set()).add(int(j))
    return pairs
