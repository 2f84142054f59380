"""Pure ranking: candidate papers and subscriber profiles in, explained picks out.

No database, no clock, no globals: `now` and the configuration are parameters, so the CLI, the
web preview, the benchmarks and the email all call the same `rank_papers`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.preprocessing import normalize

DAY = 86400.0


@dataclass(frozen=True)
class RankPaper:
    id: str
    title: str
    abstract: str = ""
    published: dt.datetime | None = None
    first_seen: dt.datetime | None = None
    upvotes: int | None = None
    comments: int | None = None
    categories: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        # The title carries the most signal per word: count it twice.
        return f"{self.title}. {self.title}. {self.abstract}"

    @property
    def date(self) -> dt.datetime | None:
        return self.published or self.first_seen


@dataclass(frozen=True)
class Profile:
    id: str
    topics: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    liked: tuple[RankPaper, ...] = ()
    disliked: tuple[RankPaper, ...] = ()
    seen: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class RankingConfig:
    top_k: int = 10
    half_life_days: float = 3.0
    min_relevance: float = 0.05
    weight_topic: float = 0.6
    weight_recency: float = 0.25
    weight_trending: float = 0.15
    # Relevance (a cosine) at or above this counts as a full topical match.
    relevance_scale: float = 0.35
    # Upvotes (plus half the comments) that count as fully trending, on a log scale.
    trending_reference: float = 200.0
    # How much a liked paper counts against a topic, and how hard dislikes push down.
    liked_weight: float = 0.9
    disliked_weight: float = 0.5
    # Two picks more similar than this are near-duplicates: keep only the better one.
    duplicate_similarity: float = 0.75
    # Profiles scored per matrix product; bounds memory at (queries in chunk) x (papers).
    chunk_profiles: int = 2000


@dataclass(frozen=True)
class Pick:
    paper_id: str
    score: float
    why: str
    relevance: float
    matched: str


class TopicModel:
    """TF-IDF over hashed word unigrams and bigrams, with IDF fitted on a paper corpus.

    Hashing keeps no vocabulary: fitting 5,000 abstracts takes under a second instead of six,
    and a worker does not hold a dictionary of half a million bigrams.
    """

    def __init__(self, hasher: HashingVectorizer, idf: TfidfTransformer) -> None:
        self.hasher = hasher
        self.idf = idf

    @staticmethod
    def _hasher() -> HashingVectorizer:
        return HashingVectorizer(
            stop_words="english",
            ngram_range=(1, 2),
            n_features=2**21,
            alternate_sign=False,
            norm=None,
            strip_accents="unicode",
            dtype=np.float32,
        )

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TopicModel:
        return cls.fit_transform(texts)[0]

    @classmethod
    def fit_transform(cls, texts: Sequence[str]) -> tuple[TopicModel, sparse.csr_matrix]:
        hasher = cls._hasher()
        counts = hasher.transform(list(texts) or ["empty"])
        idf = TfidfTransformer(sublinear_tf=True)
        weighted = idf.fit_transform(counts)
        vectors = normalize(weighted).astype(np.float32)
        return cls(hasher, idf), vectors[: len(texts)]

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        weighted = self.idf.transform(self.hasher.transform(list(texts)))
        return normalize(weighted).astype(np.float32)


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


def excluded_mask(corpus: PreparedCorpus, profiles: Sequence[Profile]) -> sparse.csr_matrix:
    """(profiles x papers) boolean: True where a paper matches one of the profile's excluded terms.

    Each distinct term is matched once over the corpus (and remembered), then combined per
    profile by a sparse product, so thousands of profiles sharing a few terms cost a few passes.
    """
    n_papers = len(corpus.papers)
    terms = sorted({t.strip().casefold() for p in profiles for t in p.exclude if t.strip()})
    if not terms:
        return sparse.csr_matrix((len(profiles), n_papers), dtype=bool)
    term_index = {t: i for i, t in enumerate(terms)}
    rows, cols = [], []
    for j, term in enumerate(terms):
        hits = corpus.term_hits(term)
        rows.extend([j] * len(hits))
        cols.extend(hits.tolist())
    term_hits = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(terms), n_papers)
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


def explain(paper: RankPaper, matched: str, now: dt.datetime) -> str:
    parts = [matched]
    if paper.upvotes:
        parts.append(f"{paper.upvotes} upvote" + ("" if paper.upvotes == 1 else "s"))
    if paper.comments:
        parts.append(f"{paper.comments} comment" + ("" if paper.comments == 1 else "s"))
    age = _age_phrase(paper, now)
    if age:
        parts.append(age)
    return "; ".join(parts)


@dataclass(frozen=True)
class PreparedCorpus:
    """Everything about the candidate papers that does not depend on a profile.

    Prepare it once per digest run and rank every batch of subscribers against it.
    """

    papers: Sequence[RankPaper]
    model: TopicModel
    vectors: sparse.csr_matrix
    vectors_t: sparse.csr_matrix
    prior: np.ndarray
    index: dict[str, int]
    now: dt.datetime
    # Memoised as rankings ask: paper index -> its near-duplicates; excluded term -> matches.
    _duplicates: dict[int, frozenset[int]] = field(default_factory=dict)
    _term_hits: dict[str, np.ndarray] = field(default_factory=dict)

    def prefetch_duplicates(self, indices: Iterable[int], threshold: float) -> None:
        """Find the near-duplicates of many papers with one sparse product."""
        new = sorted({int(j) for j in indices} - self._duplicates.keys())
        if not new:
            return
        sims = (self.vectors[new] @ self.vectors_t).tocsr()
        for row, j in enumerate(new):
            start, end = sims.indptr[row], sims.indptr[row + 1]
            cols = sims.indices[start:end][sims.data[start:end] >= threshold]
            self._duplicates[j] = frozenset(cols.tolist()) - {j}

    def near_duplicates(self, j: int, threshold: float) -> frozenset[int]:
        if j not in self._duplicates:
            self.prefetch_duplicates([j], threshold)
        return self._duplicates[j]

    def term_hits(self, term: str) -> np.ndarray:
        """Indices of the papers whose title or abstract contains the term (memoised)."""
        hits = self._term_hits.get(term)
        if hits is None:
            pattern = _term_pattern(term)
            hits = np.array(
                [
                    i
                    for i, p in enumerate(self.papers)
                    if pattern.search(f"{p.title} {p.abstract}".casefold())
                ],
                dtype=np.int64,
            )
            self._term_hits[term] = hits
        return hits


def prepare_corpus(
    papers: Sequence[RankPaper],
    *,
    now: dt.datetime,
    config: RankingConfig = RankingConfig(),
    model: TopicModel | None = None,
) -> PreparedCorpus:
    if model is None:
        model, vectors = TopicModel.fit_transform([p.text for p in papers])
    else:
        vectors = model.transform([p.text for p in papers])
    prior = config.weight_recency * recency(papers, now, config.half_life_days)
    prior = prior + config.weight_trending * trending(papers, config.trending_reference)
    return PreparedCorpus(
        papers=papers,
        model=model,
        vectors=vectors,
        vectors_t=vectors.T.tocsr(),
        prior=prior,
        index={p.id: i for i, p in enumerate(papers)},
        now=now,
    )


def rank_prepared(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    *,
    config: RankingConfig = RankingConfig(),
) -> list[list[Pick]]:
    """For each profile, at most `top_k` picks from a prepared corpus, best first."""
    if not corpus.papers or not profiles:
        return [[] for _ in profiles]
    results: list[list[Pick]] = []
    for start in range(0, len(profiles), config.chunk_profiles):
        chunk = profiles[start : start + config.chunk_profiles]
        results.extend(_rank_chunk(corpus, chunk, config))
    return results


def rank_papers(
    papers: Sequence[RankPaper],
    profiles: Sequence[Profile],
    *,
    now: dt.datetime,
    config: RankingConfig = RankingConfig(),
    model: TopicModel | None = None,
) -> list[list[Pick]]:
    """For each profile, at most `top_k` picks, best first, each with a one-line reason."""
    if not papers or not profiles:
        return [[] for _ in profiles]
    corpus = prepare_corpus(papers, now=now, config=config, model=model)
    return rank_prepared(corpus, profiles, config=config)


def _rank_chunk(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    config: RankingConfig,
) -> list[list[Pick]]:
    papers, now, model = corpus.papers, corpus.now, corpus.model
    paper_vectors_t, prior, index = corpus.vectors_t, corpus.prior, corpus.index
    # Build one query row per topic and one per liked/disliked centroid, owned by a profile.
    texts: list[str] = []
    labels: list[str] = []
    owners: list[int] = []
    weights: list[float] = []
    for i, profile in enumerate(profiles):
        for topic in profile.topics:
            if topic.strip():
                texts.append(topic)
                labels.append(f"matches '{topic.strip()}'")
                owners.append(i)
                weights.append(1.0)
        if profile.liked:
            texts.append(" ".join(p.text for p in profile.liked))
            labels.append("like papers you liked")
            owners.append(i)
            weights.append(config.liked_weight)
        if profile.disliked:
            texts.append(" ".join(p.text for p in profile.disliked))
            labels.append("")
            owners.append(i)
            weights.append(-config.disliked_weight)
    n_profiles, n_papers = len(profiles), len(papers)
    relevance = np.zeros((n_profiles, n_papers), dtype=np.float32)
    best_query = np.full((n_profiles, n_papers), -1, dtype=np.int32)
    if texts:
        queries = model.transform(texts)
        sims = (queries @ paper_vectors_t).toarray()  # (queries x papers)
        owner_arr = np.asarray(owners)
        weight_arr = np.asarray(weights, dtype=np.float32)
        positive = weight_arr > 0
        pos_sims = sims[positive] * weight_arr[positive, None]
        pos_owner = owner_arr[positive]
        pos_ids = np.flatnonzero(positive)
        # Rows are grouped by owner in order: reduce each owner's block to its best query.
        starts = (
            np.flatnonzero(np.r_[True, pos_owner[1:] != pos_owner[:-1]])
            if len(pos_owner)
            else np.array([], dtype=int)
        )
        for k, s in enumerate(starts):
            e = starts[k + 1] if k + 1 < len(starts) else len(pos_owner)
            block = pos_sims[s:e]
            arg = block.argmax(axis=0)
            relevance[pos_owner[s]] = block[arg, np.arange(n_papers)]
            best_query[pos_owner[s]] = pos_ids[s:e][arg]
        negative = ~positive
        if negative.any():
            np.add.at(relevance, owner_arr[negative], sims[negative] * weight_arr[negative, None])

    scores = (
        config.weight_topic * np.minimum(1.0, np.maximum(relevance, 0) / config.relevance_scale)
        + prior[None, :]
    )
    blocked = relevance < config.min_relevance
    blocked |= excluded_mask(corpus, profiles).toarray()
    for i, profile in enumerate(profiles):
        seen = [index[pid] for pid in profile.seen if pid in index]
        if seen:
            blocked[i, seen] = True
    scores = np.where(blocked, -np.inf, scores)

    pool = max(config.top_k * 4, config.top_k + 10)
    tops: list[list[int]] = []
    for i in range(n_profiles):
        row = scores[i]
        allowed = int(np.count_nonzero(np.isfinite(row)))
        if allowed == 0:
            tops.append([])
            continue
        k = min(pool, allowed)
        top = np.argpartition(-row, k - 1)[:k] if k < n_papers else np.arange(n_papers)
        top = top[np.isfinite(row[top])]
        # Sort by score, then id, so equal scores give the same order on every run.
        tops.append(sorted(top.tolist(), key=lambda j: (-row[j], papers[j].id)))
    corpus.prefetch_duplicates(
        (j for ranked in tops for j in ranked[: config.top_k * 2]), config.duplicate_similarity
    )

    out: list[list[Pick]] = []
    for i, ranked in enumerate(tops):
        row = scores[i]
        picks: list[int] = []
        for j in ranked:
            if picks and not corpus.near_duplicates(j, config.duplicate_similarity).isdisjoint(
                picks
            ):
                continue
            picks.append(j)
            if len(picks) == config.top_k:
                break
        chosen = []
        for j in picks:
            q = best_query[i, j]
            matched = labels[q] if q >= 0 else "topical match"
            chosen.append(
                Pick(
                    paper_id=papers[j].id,
                    score=round(float(row[j]), 6),
                    why=explain(papers[j], matched, now),
                    relevance=round(float(relevance[i, j]), 6),
                    matched=matched,
                )
            )
        out.append(chosen)
    return out
