"""Pure ranking: candidate papers and subscriber profiles in, explained picks out.

No database, no clock, no globals: `now` and the configuration are parameters, so the CLI, the
web preview, the benchmarks and the email all call the same `rank_papers`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
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

    @classmethod
    def of(cls, record: Any) -> RankPaper:
        """The ranking view of any paper record with the usual fields (a stored Paper, a
        PaperIn read from a file)."""
        return cls(
            id=record.id,
            title=record.title,
            abstract=record.abstract,
            published=record.published,
            first_seen=record.first_seen,
            upvotes=record.upvotes,
            comments=record.comments,
            categories=tuple(record.categories),
        )

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
    # Below this relevance a paper is not sent at all: an empty day is better than noise.
    min_relevance: float = 0.05
    weight_topic: float = 0.6
    weight_recency: float = 0.25
    weight_trending: float = 0.15
    # The topical part is relevance over the profile's best relevance of the day, but never over
    # less than this: on a day with only weak matches, none of them gets full topical credit.
    relevance_scale: float = 0.35
    # Upvotes (plus half the comments) that count as fully trending, on a log scale.
    trending_reference: float = 200.0
    # How much a liked paper counts against a topic, and how hard dislikes push down.
    liked_weight: float = 0.9
    disliked_weight: float = 0.5
    # Share of the latent-semantic (LSA) similarity in relevance; the rest is TF-IDF cosine.
    semantic_weight: float = 0.7
    # Query expansion in the latent space: each topic (and the liked papers) is moved towards
    # its nearest papers of the model's corpus by this weight.
    feedback_papers: int = 30
    feedback_weight: float = 1.0
    # Field votes: a query's field is its nearest papers of the model's corpus (this share of
    # the corpus), and a candidate's vote is the share of its `field_neighbours` nearest corpus
    # papers inside that field. A paper among many of the field's papers matches the topic even
    # where it shares few words with it. The vote takes `field_weight` of relevance.
    field_weight: float = 0.5
    field_share: float = 0.015
    field_neighbours: int = 10
    # Share of sentence-embedding similarity in relevance, when the model has an encoder.
    embedding_weight: float = 0.5
    # The same share for liked and disliked papers. Zero by default: the TF-IDF and latent
    # centroid of whole abstracts already says more than a mean of sentence embeddings, and
    # blending them in lowered precision on liked-paper profiles (bench/relevance.py).
    feedback_embedding_weight: float = 0.0
    # Each pick already made for the same topic takes this share off the next one's score, so
    # one topic does not crowd the others out of a digest.
    topic_crowding: float = 0.1
    # Share of the all-topics-together query in topical relevance (the rest is the best single
    # topic): papers at the crossing of a profile's topics rise, one-topic matches still count.
    joint_topics: float = 0.5
    # Two picks more similar than this are near-duplicates: keep only the better one.
    duplicate_similarity: float = 0.75
    # Profiles scored per matrix product; bounds memory at (queries in chunk) x (papers).
    chunk_profiles: int = 1000


@dataclass(frozen=True)
class Pick:
    paper_id: str
    score: float
    why: str
    relevance: float
    matched: str


# An optional sentence-embedding backend: texts in, unit-norm rows out (see digest/embeddings.py).
Encoder = Callable[[Sequence[str]], np.ndarray]

# Below this many papers a latent space would be noise; TF-IDF alone ranks small corpora.
MIN_SEMANTIC_DOCS = 1000


class TopicModel:
    """TF-IDF plus a latent-semantic (LSA) space fitted on a paper corpus.

    Fit it once per run on the paper store (or let `rank_papers` fit it on the candidates) and
    pass it to every batch; refit as papers arrive. The LSA space matches papers that share
    meaning but not words ("legged locomotion" and "quadruped walking").
    """

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        components: np.ndarray | None = None,
        documents: np.ndarray | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        self.vectorizer = vectorizer
        # (dimensions x vocabulary): the projection onto the latent space, or None.
        self.components = components
        # (corpus papers x dimensions), unit rows, float64: the corpus in the latent space, for
        # query expansion (pseudo-relevance feedback).
        self.documents = documents
        # Optional sentence embeddings, blended into relevance by `embedding_weight`.
        self.encoder = encoder

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        *,
        dimensions: int = 256,
        min_docs: int = MIN_SEMANTIC_DOCS,
        max_features: int = 300_000,
        svd_iterations: int = 4,
        encoder: Encoder | None = None,
    ) -> TopicModel:
        return cls.fit_transform(
            texts,
            dimensions=dimensions,
            min_docs=min_docs,
            max_features=max_features,
            svd_iterations=svd_iterations,
            encoder=encoder,
        )[0]

    @classmethod
    def fit_transform(
        cls,
        texts: Sequence[str],
        *,
        dimensions: int = 256,
        min_docs: int = MIN_SEMANTIC_DOCS,
        max_features: int = 300_000,
        svd_iterations: int = 4,
        encoder: Encoder | None = None,
    ) -> tuple[TopicModel, sparse.csr_matrix]:
        """The fitted model and the TF-IDF rows of `texts` (what `transform` would give),
        tokenising the texts once instead of twice."""
        given = len(texts)
        texts = list(texts) or ["empty"]
        large = len(texts) >= 1000
        vectorizer = TfidfVectorizer(
            stop_words="english",
            sublinear_tf=True,
            ngram_range=(1, 2),
            # On a real corpus, drop one-off terms and near-stopwords: smaller and sharper.
            min_df=2 if large else 1,
            max_df=0.5 if large else 1.0,
            max_features=max_features,
            dtype=np.float32,
            strip_accents="unicode",
        )
        matrix = normalize(vectorizer.fit_transform(texts))
        rows = matrix[:given].astype(np.float32)
        k = min(dimensions, len(texts) // 4, matrix.shape[1] - 1)
        if len(texts) < min_docs or k < 16:
            return cls(vectorizer, encoder=encoder), rows
        svd = TruncatedSVD(n_components=k, n_iter=svd_iterations, random_state=0)
        documents = normalize(svd.fit_transform(matrix)).astype(np.float64)
        components = np.ascontiguousarray(svd.components_, dtype=np.float32)
        return cls(vectorizer, components, documents, encoder), rows

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return normalize(self.vectorizer.transform(list(texts))).astype(np.float32)

    def semantic(self, vectors: sparse.csr_matrix) -> np.ndarray | None:
        """Unit vectors in the latent space for these TF-IDF rows (None without one)."""
        if self.components is None:
            return None
        dense = np.asarray(vectors @ self.components.T, dtype=np.float32)
        return normalize(dense)

    def nearest(self, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Each latent row's `count` nearest corpus papers, nearest first: (indices, cosines)."""
        assert self.documents is not None
        count = min(count, self.documents.shape[0])
        index = np.empty((len(vectors), count), dtype=np.int64)
        cosine = np.empty((len(vectors), count), dtype=np.float64)
        # Blocks of rows bound memory at block x corpus size; float64 keeps each row's result
        # independent of the block it is computed in.
        for start in range(0, len(vectors), 256):
            sims = vectors[start : start + 256].astype(np.float64) @ self.documents.T
            top = np.argpartition(-sims, count - 1, axis=1)[:, :count]
            near = np.take_along_axis(sims, top, axis=1)
            # Nearest first; equal cosines by corpus index, so the order is the same every run.
            order = np.lexsort((top, -near), axis=1)
            index[start : start + 256] = np.take_along_axis(top, order, axis=1)
            cosine[start : start + 256] = np.take_along_axis(near, order, axis=1)
        return index, cosine

    def feedback(
        self, queries: np.ndarray, config: RankingConfig
    ) -> tuple[np.ndarray, sparse.csr_matrix | None]:
        """Pseudo-relevance feedback in the latent space, for these latent query rows.

        Each query is moved towards its `feedback_papers` nearest corpus papers (Rocchio), so a
        two-word topic reaches the vocabulary of its field; and its field, its nearest corpus
        papers (`field_share` of them, at least `field_neighbours`), comes back as a
        (queries x corpus) 0/1 matrix (None when field votes are off).
        """
        if self.documents is None or not len(queries):
            return queries, None
        m = config.feedback_papers if config.feedback_weight > 0 else 0
        f = 0
        if config.field_weight > 0:
            size = round(config.field_share * self.documents.shape[0])
            f = max(size, config.field_neighbours)
        if max(m, f) <= 0:
            return queries, None
        index, _ = self.nearest(queries, max(m, f))
        expanded = queries.astype(np.float64)
        if m > 0:
            centroid = self.documents[index[:, :m]].mean(axis=1)
            expanded = normalize(expanded + config.feedback_weight * normalize(centroid))
        field = None
        if f > 0:
            members = index[:, :f]
            field = sparse.csr_matrix(
                (
                    np.ones(members.size),
                    (np.repeat(np.arange(len(queries)), members.shape[1]), members.ravel()),
                ),
                shape=(len(queries), self.documents.shape[0]),
            )
        return expanded, field

    def neighbours(self, vectors: np.ndarray, count: int) -> sparse.csr_matrix | None:
        """(rows x corpus): each latent row's `count` nearest corpus papers, weighted by cosine,
        weights summing to one (None without a latent space)."""
        if self.documents is None or count <= 0 or not len(vectors):
            return None
        index, cosine = self.nearest(vectors, count)
        weights = normalize(np.maximum(cosine, 0.0), norm="l1")
        return sparse.csr_matrix(
            (weights.ravel(), (np.repeat(np.arange(len(vectors)), index.shape[1]), index.ravel())),
            shape=(len(vectors), self.documents.shape[0]),
        )


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


def explain(paper: RankPaper, matched: str, now: dt.datetime, extra: Sequence[str] = ()) -> str:
    parts = [matched, *extra]
    if paper.upvotes:
        parts.append(f"{paper.upvotes} upvote" + ("" if paper.upvotes == 1 else "s"))
    if paper.comments:
        parts.append(f"{paper.comments} comment" + ("" if paper.comments == 1 else "s"))
    age = _age_phrase(paper, now)
    if age:
        parts.append(age)
    return "; ".join(parts)


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


@dataclass
class PreparedCorpus:
    """The paper side of a ranking, computed once and shared by every batch of profiles."""

    papers: Sequence[RankPaper]
    now: dt.datetime
    config: RankingConfig
    model: TopicModel
    vectors: sparse.csr_matrix
    vectors_t: sparse.csr_matrix
    semantic_t: np.ndarray | None
    prior: np.ndarray
    index: dict[str, int]
    duplicates: dict[int, set[int]]
    # (embedding dimensions x papers), when the model has an encoder.
    embedded_t: np.ndarray | None = None
    # (model corpus x papers): each paper's nearest corpus papers, for field votes.
    neighbours_t: sparse.csr_matrix | None = None
    # Papers matching each excluded term seen so far (a memo: same answer, computed once).
    term_hits: dict[str, list[int]] = field(default_factory=dict)


def prepare_corpus(
    papers: Sequence[RankPaper],
    *,
    now: dt.datetime,
    config: RankingConfig = RankingConfig(),
    model: TopicModel | None = None,
) -> PreparedCorpus:
    """Vectors, recency, trending and near-duplicates of the candidates, for `rank_prepared`.

    Without a `model`, one is fitted on the candidates themselves.
    """
    if model is None:
        model, vectors = TopicModel.fit_transform([p.text for p in papers])
    else:
        vectors = model.transform([p.text for p in papers])
    semantic = model.semantic(vectors)
    neighbours = None
    if semantic is not None and config.field_weight > 0:
        neighbours = model.neighbours(semantic, config.field_neighbours)
    return PreparedCorpus(
        papers=papers,
        now=now,
        config=config,
        model=model,
        vectors=vectors,
        vectors_t=vectors.T.tocsr(),
        semantic_t=None if semantic is None else np.ascontiguousarray(semantic.T, np.float64),
        prior=config.weight_recency * recency(papers, now, config.half_life_days)
        + config.weight_trending * trending(papers, config.trending_reference),
        index={p.id: i for i, p in enumerate(papers)},
        duplicates=near_duplicates(vectors, config.duplicate_similarity),
        embedded_t=None
        if model.encoder is None
        else np.ascontiguousarray(_encode(model, [p.text for p in papers]).T),
        neighbours_t=None if neighbours is None else neighbours.T.tocsr(),
    )


def _encode(model: TopicModel, texts: Sequence[str]) -> np.ndarray:
    assert model.encoder is not None
    return normalize(np.asarray(model.encoder(list(texts)), dtype=np.float64))


def rank_prepared(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    *,
    config: RankingConfig | None = None,
) -> list[list[Pick]]:
    """`rank_papers` against a prepared corpus: call it per batch of profiles, all alike.

    `config` (default: the one the corpus was prepared with) sets the profile side; recency,
    trending, near-duplicates and the candidates' corpus neighbours (for field votes) keep the
    corpus's settings.
    """
    if not corpus.papers or not profiles:
        return [[] for _ in profiles]
    config = config or corpus.config
    results: list[list[Pick]] = []
    for start in range(0, len(profiles), config.chunk_profiles):
        chunk = profiles[start : start + config.chunk_profiles]
        results.extend(_rank_chunk(corpus, chunk, corpus.now, config, corpus.model))
    return results


def rank_papers(
    papers: Sequence[RankPaper],
    profiles: Sequence[Profile],
    *,
    now: dt.datetime,
    config: RankingConfig = RankingConfig(),
    model: TopicModel | None = None,
) -> list[list[Pick]]:
    """For each profile, at most `top_k` picks, best first, each with a one-line reason.

    Pass a `model` fitted once on the corpus to score many batches of profiles alike (or
    prepare the candidates once with `prepare_corpus` and call `rank_prepared` per
    batch); without one, a model is fitted on the candidates themselves.
    """
    if not papers or not profiles:
        return [[] for _ in profiles]
    corpus = prepare_corpus(papers, now=now, config=config, model=model)
    return rank_prepared(corpus, profiles)


def _similarities(
    model: TopicModel,
    corpus: PreparedCorpus,
    queries: sparse.csr_matrix,
    config: RankingConfig,
    *,
    expand: bool = True,
    embedded: np.ndarray | None = None,
    embedding_weight: float | None = None,
) -> np.ndarray:
    """(queries x papers): TF-IDF cosine blended with latent-semantic cosine and, with
    `expand`, with field votes (and with sentence-embedding cosine, by `embedding_weight` or
    the config's, when the queries' `embedded` rows are given)."""
    sims = (queries @ corpus.vectors_t).toarray().astype(np.float64)
    semantic = model.semantic(queries)
    if semantic is not None and corpus.semantic_t is not None:
        field = None
        if expand:
            semantic, field = model.feedback(semantic, config)
        a = config.semantic_weight
        sims *= 1.0 - a
        # In float64: a BLAS product's last bits depend on the batch's shape, and a profile's
        # picks must not depend on which other profiles share its batch.
        sims += a * (semantic.astype(np.float64) @ corpus.semantic_t)
        if field is not None and corpus.neighbours_t is not None:
            f = config.field_weight
            sims *= 1.0 - f
            sims += f * (field @ corpus.neighbours_t).toarray()
    e = config.embedding_weight if embedding_weight is None else embedding_weight
    if embedded is not None and corpus.embedded_t is not None and e > 0:
        sims *= 1.0 - e
        sims += e * (embedded @ corpus.embedded_t)
    return sims


def _centroids(
    model: TopicModel, groups: Sequence[Sequence[RankPaper]], *, embed: bool
) -> tuple[sparse.csr_matrix, list[sparse.csr_matrix], np.ndarray | None]:
    """One unit centroid per group of papers, each group's own paper vectors, and (with
    `embed`, when the model has an encoder) the centroids' sentence embeddings."""
    flat = [p.text for g in groups for p in g]
    vectors = model.transform(flat)
    rows, cols, vals, members, start = [], [], [], [], 0
    for g_index, group in enumerate(groups):
        for k in range(len(group)):
            rows.append(g_index)
            cols.append(start + k)
            vals.append(1.0 / len(group))
        members.append(vectors[start : start + len(group)])
        start += len(group)
    owner = sparse.csr_matrix((vals, (rows, cols)), shape=(len(groups), len(flat)))
    embedded = None
    if embed and model.encoder is not None:
        embedded = normalize(owner @ _encode(model, flat))
    return normalize(owner @ vectors).astype(np.float32).tocsr(), members, embedded


LIKED = -2


def _rank_chunk(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    now: dt.datetime,
    config: RankingConfig,
    model: TopicModel,
) -> list[list[Pick]]:
    papers = corpus.papers
    n_profiles, n_papers = len(profiles), len(papers)
    relevance = np.zeros((n_profiles, n_papers), dtype=np.float32)
    # Which topic row gave a paper its relevance (LIKED for the liked papers, -1 for none).
    best_query = np.full((n_profiles, n_papers), -1, dtype=np.int32)

    topic_texts: list[str] = []
    topic_labels: list[str] = []
    topic_owner: list[int] = []
    topic_slot: list[int] = []
    for i, profile in enumerate(profiles):
        slot = 0
        for topic in profile.topics:
            if topic.strip():
                topic_texts.append(topic)
                topic_labels.append(f"matches '{topic.strip()}'")
                topic_owner.append(i)
                topic_slot.append(slot)
                slot += 1
    if topic_texts:
        sims = _similarities(
            model,
            corpus,
            model.transform(topic_texts),
            config,
            embedded=_encode(model, topic_texts) if model.encoder else None,
        )
        owner_arr = np.asarray(topic_owner)
        slot_arr = np.asarray(topic_slot)
        relevance[:] = -np.inf
        # One vectorised max per topic position: profiles have a handful of topics at most.
        for slot in range(int(slot_arr.max()) + 1):
            rows = np.flatnonzero(slot_arr == slot)
            owners = owner_arr[rows]
            better = sims[rows] > relevance[owners]
            relevance[owners] = np.where(better, sims[rows], relevance[owners])
            best_query[owners] = np.where(better, rows[:, None], best_query[owners])
        relevance[np.isneginf(relevance)] = 0.0
        del sims
        multi = [i for i, p in enumerate(profiles) if sum(1 for t in p.topics if t.strip()) > 1]
        if multi and config.joint_topics > 0:
            joint = [" ; ".join(t for t in profiles[i].topics if t.strip()) for i in multi]
            sims = _similarities(
                model,
                corpus,
                model.transform(joint),
                config,
                embedded=_encode(model, joint) if model.encoder else None,
            )
            j = config.joint_topics
            relevance[multi] = (1.0 - j) * relevance[multi] + j * sims
            del sims

    liked_members: dict[int, sparse.csr_matrix] = {}
    disliked_members: dict[int, sparse.csr_matrix] = {}
    for kind, members in (("liked", liked_members), ("disliked", disliked_members)):
        owners_list = [i for i, p in enumerate(profiles) if getattr(p, kind)]
        if not owners_list:
            continue
        centroids, groups, embedded = _centroids(
            model,
            [getattr(profiles[i], kind) for i in owners_list],
            embed=config.feedback_embedding_weight > 0,
        )
        sims = _similarities(
            model,
            corpus,
            centroids,
            config,
            expand=kind == "liked",
            embedded=embedded,
            embedding_weight=config.feedback_embedding_weight,
        )
        owners = np.asarray(owners_list)
        members.update(zip(owners_list, groups, strict=True))
        if kind == "liked":
            # Feedback as a second query (Rocchio): papers like the liked ones count as matches.
            liked_rel = config.liked_weight * sims
            better = liked_rel > relevance[owners]
            relevance[owners] = np.where(better, liked_rel, relevance[owners])
            best_query[owners] = np.where(better, LIKED, best_query[owners])
        else:
            relevance[owners] -= config.disliked_weight * np.maximum(sims, 0.0)
        del sims

    blocked = relevance < config.min_relevance
    blocked |= excluded_mask(papers, profiles, corpus.term_hits).toarray()
    for i, profile in enumerate(profiles):
        seen = [corpus.index[pid] for pid in profile.seen if pid in corpus.index]
        if seen:
            blocked[i, seen] = True
    # Topical credit relative to the profile's best match of the day (floored by the scale), so
    # recency and trending weigh the same against it for every kind of profile.
    best = np.where(blocked, 0.0, relevance).max(axis=1, initial=0.0)
    scale = np.maximum(best, config.relevance_scale)[:, None]
    scores = config.weight_topic * np.maximum(relevance, 0.0) / scale + corpus.prior[None, :]
    scores = np.where(blocked, -np.inf, scores)

    out: list[list[Pick]] = []
    pool = max(config.top_k * 4, config.top_k + 10)
    for i in range(n_profiles):
        row = scores[i]
        allowed = int(np.count_nonzero(np.isfinite(row)))
        if allowed == 0:
            out.append([])
            continue
        k = min(pool, allowed)
        top = np.argpartition(-row, k - 1)[:k] if k < n_papers else np.arange(n_papers)
        top = top[np.isfinite(row[top])]
        # Sort by score, then id, so equal scores give the same order on every run.
        ordered = sorted(top.tolist(), key=lambda j: (-row[j], papers[j].id))
        picks = _select(ordered, row, best_query[i], corpus.duplicates, config)
        out.append(
            [
                _pick(
                    corpus,
                    profiles[i],
                    j,
                    score,
                    relevance[i, j],
                    best_query[i, j],
                    now,
                    topic_labels,
                    liked_members.get(i),
                    disliked_members.get(i),
                    config,
                )
                for j, score in picks
            ]
        )
    return out


def _select(
    ordered: list[int],
    row: np.ndarray,
    labels: np.ndarray,
    duplicates: dict[int, set[int]],
    config: RankingConfig,
) -> list[tuple[int, float]]:
    """Greedy picks: best adjusted score first, no near-duplicates, topics taking turns.

    A pick's score is its score discounted by the picks of its topic before it, so the scores
    of a digest never increase down the list.
    """
    picks: list[tuple[int, float]] = []
    chosen: set[int] = set()
    per_label: dict[int, int] = {}
    remaining = list(ordered)
    while remaining and len(picks) < config.top_k:
        best_j, best_value = -1, -np.inf
        for j in remaining:
            value = row[j] * (1.0 - config.topic_crowding) ** per_label.get(int(labels[j]), 0)
            if value > best_value:
                best_j, best_value = j, value
        remaining.remove(best_j)
        if duplicates.get(best_j, set()) & chosen:
            continue
        picks.append((best_j, float(best_value)))
        chosen.add(best_j)
        label = int(labels[best_j])
        per_label[label] = per_label.get(label, 0) + 1
    return picks


def _nearest(members: sparse.csr_matrix, vector: sparse.csr_matrix) -> tuple[int, float]:
    sims = (members @ vector.T).toarray().ravel()
    k = int(sims.argmax())
    return k, float(sims[k])


def _pick(
    corpus: PreparedCorpus,
    profile: Profile,
    j: int,
    score: float,
    relevance: float,
    query: int,
    now: dt.datetime,
    topic_labels: list[str],
    liked: sparse.csr_matrix | None,
    disliked: sparse.csr_matrix | None,
    config: RankingConfig,
) -> Pick:
    paper = corpus.papers[j]
    vector = corpus.vectors[j] if liked is not None or disliked is not None else None
    extra: list[str] = []
    if query == LIKED and liked is not None and vector is not None:
        k, _ = _nearest(liked, vector)
        matched = f"like '{_short_title(profile.liked[k].title)}' you liked"
    elif query >= 0:
        matched = topic_labels[query]
    else:
        matched = "topical match"
    if disliked is not None and vector is not None:
        k, sim = _nearest(disliked, vector)
        if sim >= 0.2:
            extra.append(
                f"ranked down: near '{_short_title(profile.disliked[k].title)}' you disliked"
            )
    return Pick(
        paper_id=paper.id,
        score=round(float(score), 6),
        why=explain(paper, matched, now, extra),
        relevance=round(float(relevance), 6),
        matched=matched,
    )
