"""Pure ranking: candidate papers and subscriber profiles in, explained picks out.

No database, no clock, no globals: `now` and the configuration are parameters, so the CLI, the
web preview, the benchmarks and the email all call the same `rank_papers`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
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
    def embedding_text(self) -> str:
        # A sentence encoder reads a bounded number of word pieces (256 for MiniLM): the title
        # once, then the abstract, as the embedding methods it is compared with read a paper.
        return f"{self.title}. {self.abstract}"

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
    # Memory for remembering each topic's similarities to the candidates across batches:
    # subscribers share topics, so most of a batch's queries were already computed.
    query_memo_mb: float = 64.0


class Pick(NamedTuple):
    """One paper picked for a profile: its score and the one-line reason (a tuple: a day's run
    makes a million)."""

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
        rows_ready: Callable[[sparse.csr_matrix], None] | None = None,
    ) -> tuple[TopicModel, sparse.csr_matrix]:
        """The fitted model and the TF-IDF rows of `texts` (what `transform` would give),
        tokenising the texts once instead of twice. `rows_ready` gets the rows as soon as they
        exist, before the latent space is fitted."""
        given = len(texts)
        texts = list(texts) or ["empty"]
        large = len(texts) >= 1000

        params: dict[str, Any] = dict(
            stop_words="english",
            ngram_range=(1, 2),
            # On a real corpus, drop one-off terms and near-stopwords: smaller and sharper.
            min_df=2 if large else 1,
            max_df=0.5 if large else 1.0,
            dtype=np.float32,
            strip_accents="unicode",
        )
        # scikit-learn with a `max_features` limit sorts every term it met (each bigram of the
        # corpus: millions for a few months of papers) before dropping the rare ones. Counted
        # without the limit, the rare ones go first, and the limit is applied here as
        # scikit-learn does (the most frequent terms over the same array, ties alike): the same
        # vocabulary and matrix (tested), 5 s less on a 25,000-paper corpus.
        counter = CountVectorizer(**params)
        counts = counter.fit_transform(texts)
        vocabulary = counter.vocabulary_
        if len(vocabulary) > max_features:
            counts, vocabulary = _most_frequent(counts, vocabulary, max_features)
        weighting = TfidfTransformer(sublinear_tf=True)
        counts = weighting.fit(counts).transform(counts, copy=False)
        vectorizer = TfidfVectorizer(**params, sublinear_tf=True, max_features=max_features)
        vectorizer.vocabulary_ = vocabulary
        vectorizer.idf_ = weighting.idf_
        matrix = normalize(counts)
        rows = matrix[:given].astype(np.float32)
        if rows_ready is not None:
            rows_ready(rows)
        k = min(dimensions, len(texts) // 4, matrix.shape[1] - 1)
        if len(texts) < min_docs or k < 16:
            return cls(vectorizer, encoder=encoder), rows
        projected, basis = truncated_svd(matrix, k, iterations=svd_iterations)
        documents = normalize(projected).astype(np.float64)
        # Kept in Fortran order: `vectors @ components.T` then reads a C-ordered matrix in
        # place, where a C-ordered `components` made scipy copy all of it on every call.
        components = np.asfortranarray(basis, dtype=np.float32)
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
        if self.documents is None:
            raise RuntimeError("nearest() needs a model fitted with its documents")
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


def _most_frequent(
    counts: sparse.csr_matrix, vocabulary: dict[str, int], limit: int
) -> tuple[sparse.csr_matrix, dict[str, int]]:
    """The `limit` most frequent terms, as scikit-learn's `max_features` keeps them: by total
    count, over the alphabetically sorted terms, with its (unstable) argsort's tie order."""
    totals = np.asarray(counts.sum(axis=0)).ravel()
    keep = np.sort((-totals).argsort()[:limit])
    terms = sorted(vocabulary, key=vocabulary.__getitem__)
    return counts[:, keep].tocsr(), {terms[i]: n for n, i in enumerate(keep)}


def truncated_svd(
    matrix: sparse.csr_matrix, k: int, *, iterations: int = 4, oversample: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The rank-`k` latent space of a (papers x terms) matrix: the papers' coordinates
    (U times the singular values, papers x k) and the basis (k x terms), as TruncatedSVD gives.

    Randomised subspace iteration (Halko, Martinsson and Tropp 2011, algorithm 4.4) started
    on the papers' side, with its QR steps there too: the corpus has far fewer papers than
    terms. scikit-learn's LU steps on the terms' side took most of a fit (22 s of 25 s on
    5,000 papers with a 76,000-term vocabulary; about 3 s here), and in float32 with one
    terms-side matrix alive at a time the fit's memory peak is a third of theirs.
    """
    x = matrix.astype(np.float32).tocsr()
    xt = x.T.tocsr()  # CSR products with C-ordered dense operands: no hidden copies
    rng = np.random.default_rng(seed)
    width = min(k + oversample, min(x.shape))
    q = rng.standard_normal((x.shape[0], width), dtype=np.float32)
    for _ in range(iterations + 1):
        q, _ = np.linalg.qr(x @ (xt @ q))
        q = np.ascontiguousarray(q, dtype=np.float32)
    b_t = xt @ q  # (terms x width): B = Q^T X, transposed
    # The small eigenproblem of B B^T gives B's singular vectors and values.
    values, vectors = np.linalg.eigh((b_t.T @ b_t).astype(np.float64))
    order = np.argsort(values)[::-1][:k]
    sigma = np.sqrt(np.maximum(values[order], 0.0))
    left = vectors[:, order].astype(np.float32)
    basis = b_t @ left  # (terms x k), scaled below into unit right singular vectors
    del b_t
    basis /= np.maximum(sigma, 1e-12).astype(np.float32)
    return (q @ left) * sigma.astype(np.float32), basis.T


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
    # Each paper's place in the order of ids: ties in score go by id.
    id_order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Each picked paper's own part of the reason ("212 upvotes; 1 day old"), made once.
    paper_reasons: dict[int, str] = field(default_factory=dict)
    # Similarities of each topic text to the papers, by ranking configuration (a bounded memo).
    query_rows: dict[RankingConfig, QueryMemo] = field(default_factory=dict)
    # TF-IDF rows of liked and disliked papers by text: a paper many subscribers liked is
    # tokenised once (a bounded memo).
    feedback_rows: TextRows = field(default_factory=lambda: TextRows(FEEDBACK_MEMO_ROWS))


FEEDBACK_MEMO_ROWS = 20_000  # about 25 MB of abstracts


class TextRows:
    """TF-IDF rows by text (as index and value arrays), at most `capacity` of them; the least
    recently used go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def matrix(self, model: TopicModel, texts: Sequence[str]) -> sparse.csr_matrix:
        """`model.transform(texts)`, each distinct text not seen before transformed once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if missing:
            new = model.transform(missing)
            for k, text in enumerate(missing):
                start, end = new.indptr[k], new.indptr[k + 1]
                self.rows[text] = (new.indices[start:end].copy(), new.data[start:end].copy())
        parts = []
        for text in texts:
            parts.append(self.rows[text])
            self.rows.move_to_end(text)
        while len(self.rows) > self.capacity:
            self.rows.popitem(last=False)
        width = len(model.vectorizer.vocabulary_)
        if not parts:
            return sparse.csr_matrix((0, width), dtype=np.float32)
        indptr = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum([len(indices) for indices, _ in parts], out=indptr[1:])
        return sparse.csr_matrix(
            (
                np.concatenate([data for _, data in parts]),
                np.concatenate([indices for indices, _ in parts]),
                indptr,
            ),
            shape=(len(parts), width),
        )


class QueryMemo:
    """Similarity rows (float32, one per query text) kept up to a memory budget; the least
    recently used go first."""

    def __init__(self, budget_bytes: float) -> None:
        self.budget = budget_bytes
        self.rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self.size = 0

    def get(self, text: str) -> np.ndarray | None:
        row = self.rows.get(text)
        if row is not None:
            self.rows.move_to_end(text)
        return row

    def put(self, text: str, row: np.ndarray) -> None:
        self.rows[text] = row
        self.size += row.nbytes
        while self.size > self.budget and len(self.rows) > 1:
            _, old = self.rows.popitem(last=False)
            self.size -= old.nbytes


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
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Near-duplicates need only the TF-IDF rows: found in a thread while the latent space
        # is fitted (both spend their time in native code that releases the GIL), which takes
        # a second and a half off the fit that every worker waits for before its first message.
        duplicates: Future[dict[int, set[int]]] | None = None

        def find_duplicates(rows: sparse.csr_matrix) -> None:
            nonlocal duplicates
            duplicates = pool.submit(near_duplicates, rows, config.duplicate_similarity)

        if model is None:
            model, vectors = TopicModel.fit_transform(
                [p.text for p in papers], rows_ready=find_duplicates
            )
        else:
            vectors = model.transform([p.text for p in papers])
            find_duplicates(vectors)
        if duplicates is None:
            raise RuntimeError("the TF-IDF rows never reached the duplicate search")
        pairs = duplicates.result()
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
        duplicates=pairs,
        id_order=np.argsort(np.argsort(np.array([p.id for p in papers], dtype=object))),
        embedded_t=None
        if model.encoder is None
        else np.ascontiguousarray(_encode(model, [p.embedding_text for p in papers]).T),
        neighbours_t=None if neighbours is None else neighbours.T.tocsr(),
    )


def _encode(model: TopicModel, texts: Sequence[str]) -> np.ndarray:
    if model.encoder is None:
        raise RuntimeError("_encode() needs a model with an encoder")
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
    model: TopicModel,
    groups: Sequence[Sequence[RankPaper]],
    *,
    embed: bool,
    memo: TextRows | None = None,
) -> tuple[sparse.csr_matrix, list[sparse.csr_matrix], np.ndarray | None]:
    """One unit centroid per group of papers, each group's own paper vectors, and (with
    `embed`, when the model has an encoder) the centroids' sentence embeddings."""
    flat = [p.text for g in groups for p in g]
    vectors = model.transform(flat) if memo is None else memo.matrix(model, flat)
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
        texts = [p.embedding_text for g in groups for p in g]
        embedded = normalize(owner @ _encode(model, texts))
    return normalize(owner @ vectors).astype(np.float32).tocsr(), members, embedded


LIKED = -2


def _query_similarities(
    corpus: PreparedCorpus, texts: Sequence[str], config: RankingConfig
) -> list[np.ndarray]:
    """Each free-text query's float32 similarities to the papers (one row per text), each
    distinct text computed once per corpus and configuration (kept up to `query_memo_mb`)."""
    model = corpus.model
    memo = corpus.query_rows.get(config)
    if memo is None:
        memo = corpus.query_rows[config] = QueryMemo(config.query_memo_mb * 2**20)
    rows: dict[str, np.ndarray] = {}
    for text in texts:
        if text not in rows:
            row = memo.get(text)
            if row is not None:
                rows[text] = row
    missing = [t for t in dict.fromkeys(texts) if t not in rows]
    if missing:
        sims = _similarities(
            model,
            corpus,
            model.transform(missing),
            config,
            embedded=_encode(model, missing) if model.encoder else None,
        ).astype(np.float32)
        for text, row in zip(missing, sims, strict=True):
            # A copy: a view would keep the whole batch's matrix alive in the memo.
            rows[text] = row = row.copy()
            memo.put(text, row)
    return [rows[text] for text in texts]


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

    # Each profile's topics are the rows of `topic_sims` from `first[i]` to `last[i]`.
    topic_texts: list[str] = []
    first = np.zeros(n_profiles, dtype=np.int64)
    last = np.zeros(n_profiles, dtype=np.int64)
    for i, profile in enumerate(profiles):
        first[i] = len(topic_texts)
        topic_texts.extend(t for t in profile.topics if t.strip())
        last[i] = len(topic_texts)
    topic_labels = [f"matches '{t.strip()}'" for t in topic_texts]
    topic_sims: list[np.ndarray] = []
    if topic_texts:
        topic_sims = _query_similarities(corpus, topic_texts, config)
        # The best single topic of each profile, its rows taken straight from the memo.
        for i in range(n_profiles):
            own = topic_sims[first[i] : last[i]]
            if own:
                relevance[i] = own[0]
                for row in own[1:]:
                    np.maximum(relevance[i], row, out=relevance[i])
        multi = np.flatnonzero(last - first > 1).tolist()
        if multi and config.joint_topics > 0:
            joint = [" ; ".join(t for t in profiles[i].topics if t.strip()) for i in multi]
            j = config.joint_topics
            for i, row in zip(multi, _query_similarities(corpus, joint, config), strict=True):
                relevance[i] = (1.0 - j) * relevance[i] + j * row

    liked_members: dict[int, sparse.csr_matrix] = {}
    disliked_members: dict[int, sparse.csr_matrix] = {}
    # Where a liked paper's likeness beat the topics (the pick is explained by the liked paper).
    liked_won: np.ndarray | None = None
    for kind, members in (("liked", liked_members), ("disliked", disliked_members)):
        owners_list = [i for i, p in enumerate(profiles) if getattr(p, kind)]
        if not owners_list:
            continue
        centroids, groups, embedded = _centroids(
            model,
            [getattr(profiles[i], kind) for i in owners_list],
            embed=config.feedback_embedding_weight > 0,
            memo=corpus.feedback_rows if model is corpus.model else None,
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
            liked_won = np.zeros((n_profiles, n_papers), dtype=bool)
            liked_won[owners] = better
        else:
            relevance[owners] -= config.disliked_weight * np.maximum(sims, 0.0)
        del sims

    # Excluded and already-sent papers are marked in `relevance` itself (-inf, below any
    # threshold), from their few coordinates: no dense mask per kind.
    excluded = excluded_mask(papers, profiles, corpus.term_hits).tocoo()
    relevance[excluded.row, excluded.col] = -np.inf
    for i, profile in enumerate(profiles):
        seen = [corpus.index[pid] for pid in profile.seen if pid in corpus.index]
        if seen:
            relevance[i, seen] = -np.inf
    blocked = relevance < config.min_relevance
    # Topical credit relative to the profile's best match of the day (floored by the scale), so
    # recency and trending weigh the same against it for every kind of profile. A row's maximum
    # is an allowed paper's whenever it reaches the threshold; else nothing is allowed.
    top_relevance = relevance.max(axis=1, initial=-np.inf)
    best = np.where(
        top_relevance >= config.min_relevance, np.maximum(top_relevance, 0.0), 0.0
    ).astype(relevance.dtype)
    scale = np.maximum(best, config.relevance_scale)[:, None]
    # The scores, negated for the partition below, written in place: these are the chunk's
    # largest arrays, and each pass over them costs as much as the arithmetic.
    topical = np.maximum(relevance, 0.0)
    topical *= config.weight_topic
    topical /= scale
    negated = np.add(topical, corpus.prior[None, :])
    del topical
    np.negative(negated, out=negated)
    np.copyto(negated, np.inf, where=blocked)
    allowed = n_papers - np.count_nonzero(blocked, axis=1)
    del blocked

    out: list[list[Pick]] = []
    pool = max(config.top_k * 4, config.top_k + 10)
    # Every profile's best `pool` papers in one partition of the whole matrix.
    k_all = min(pool, n_papers)
    tops = (
        np.argpartition(negated, k_all - 1, axis=1)[:, :k_all]
        if k_all < n_papers
        else np.broadcast_to(np.arange(n_papers), (n_profiles, n_papers))
    )
    # Each profile's pool sorted by score, then id (so that equal scores give the same order on
    # every run), for the whole chunk in one sort; blocked papers (+inf) sort last, and are cut.
    values = np.take_along_axis(negated, tops, axis=1)  # minus the scores
    rows = np.repeat(np.arange(n_profiles), tops.shape[1])
    order = np.lexsort((corpus.id_order[tops].ravel(), values.ravel(), rows))
    sorted_columns = tops.ravel()[order].reshape(tops.shape)
    sorted_values = values.ravel()[order].reshape(tops.shape)
    counts: list[int] = np.isfinite(sorted_values).sum(axis=1).tolist()
    column_lists: list[list[int]] = sorted_columns.tolist()  # type: ignore[assignment]
    value_lists: list[list[float]] = sorted_values.tolist()
    for i in range(n_profiles):
        if allowed[i] == 0:
            out.append([])
            continue
        count = counts[i]
        columns = sorted_columns[i, :count]
        ordered = list(zip(value_lists[i][:count], column_lists[i][:count], strict=True))
        labels = _labels(columns, i, first, last, topic_sims, liked_won)
        picks = _select(ordered, labels, corpus.duplicates, config)
        out.append(
            _picks(
                corpus,
                profiles[i],
                picks,
                relevance[i],
                labels,
                topic_labels,
                liked_members.get(i),
                disliked_members.get(i),
            )
        )
    return out


def _labels(
    columns: np.ndarray,
    i: int,
    first: np.ndarray,
    last: np.ndarray,
    topic_sims: list[np.ndarray],
    liked_won: np.ndarray | None,
) -> dict[int, int]:
    """What gave profile `i` its relevance to each of these papers: the row of its best topic
    (the first of equals), LIKED for a liked paper's likeness, -1 for nothing."""
    keys = columns.tolist()
    a, b = int(first[i]), int(last[i])
    if b - a == 1:
        labels = dict.fromkeys(keys, a)
    elif b > a:
        best = np.argmax([topic_sims[r][columns] for r in range(a, b)], axis=0)
        labels = dict(zip(keys, (best + a).tolist(), strict=True))
    else:
        labels = dict.fromkeys(keys, -1)
    if liked_won is not None:
        won = liked_won[i, columns]
        if won.any():
            labels.update(dict.fromkeys(columns[won].tolist(), LIKED))
    return labels


def _select(
    ordered: list[tuple[float, int]],
    labels: dict[int, int],
    duplicates: dict[int, set[int]],
    config: RankingConfig,
) -> list[tuple[int, float]]:
    """Greedy picks: best adjusted score first, no near-duplicates, topics taking turns.

    `ordered` holds (minus the score, paper) best first. A pick's score is its score discounted
    by the picks of its topic before it, so the scores of a digest never increase down the list.
    Within a topic the discount is the same for all, so the next pick is always the best
    remaining paper of some topic: only those heads (one per topic) are compared, the earlier
    one winning a tie.
    """
    queues: dict[int, list[tuple[float, int, int]]] = {}
    for position, (negative, j) in enumerate(ordered):
        queues.setdefault(labels[j], []).append((-negative, position, j))
    heads = dict.fromkeys(queues, 0)
    picks: list[tuple[int, float]] = []
    chosen: set[int] = set()
    per_label: dict[int, int] = {}
    keep = 1.0 - config.topic_crowding
    while len(picks) < config.top_k:
        best: tuple[float, int, int, int] | None = None  # value, position, paper, label
        for label, head in heads.items():
            queue = queues[label]
            if head < len(queue):
                score, position, j = queue[head]
                value = score * keep ** per_label.get(label, 0)
                if best is None or value > best[0] or (value == best[0] and position < best[1]):
                    best = (value, position, j, label)
        if best is None:
            break
        value, _, best_j, label = best
        heads[label] += 1
        if duplicates.get(best_j, _NONE) & chosen:
            continue
        picks.append((best_j, value))
        chosen.add(best_j)
        per_label[label] = per_label.get(label, 0) + 1
    return picks


_NONE: frozenset[int] = frozenset()


def _nearest(
    members: sparse.csr_matrix | None, corpus: PreparedCorpus, columns: list[int]
) -> list[tuple[int, float]] | None:
    """For each of these papers, the most similar of `members` (liked or disliked papers) and
    how similar: one sparse product for all of a digest's picks."""
    if members is None or not columns:
        return None
    sims = _row_dots(members, corpus.vectors, columns)
    best = sims.argmax(axis=0)
    return list(zip(best.tolist(), sims[best, np.arange(len(columns))].tolist(), strict=True))


def _row_dots(left: sparse.csr_matrix, right: sparse.csr_matrix, rows: list[int]) -> np.ndarray:
    """(left rows x `rows`): dot products of a few sparse rows with a few rows of `right`.

    The same numbers as `(left @ right[rows].T).toarray()`, summed in float64, without scipy's
    product machinery, whose set-up (a transpose, arrays as long as the vocabulary) cost
    several times the arithmetic for a digest's ten picks: the right rows' terms are looked up
    among the left rows' few hundred (a sorted search), against a small dense copy of these.
    """
    n_left = left.shape[0]
    if not left.nnz or not rows:
        return np.zeros((n_left, len(rows)))
    if not left.has_canonical_format:
        left = left.copy()
        left.sum_duplicates()
    union, place = np.unique(left.indices, return_inverse=True)
    dense = np.zeros((n_left, len(union)))
    dense[np.repeat(np.arange(n_left), np.diff(left.indptr)), place] = left.data
    starts = right.indptr[rows]
    lengths = right.indptr[np.asarray(rows) + 1] - starts
    # The right rows' entries, one after the other, and which of `rows` each belongs to.
    take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    terms = right.indices[take]
    at = np.minimum(np.searchsorted(union, terms), len(union) - 1)
    shared = union[at] == terms
    products = dense[:, at[shared]] * right.data[take[shared]]
    owner = np.repeat(np.arange(len(rows)), lengths)[shared]
    cells = (np.arange(n_left)[:, None] * len(rows) + owner).ravel()
    return np.bincount(cells, weights=products.ravel(), minlength=n_left * len(rows)).reshape(
        n_left, len(rows)
    )


def _reasons_of(corpus: PreparedCorpus, j: int) -> str:
    """The paper's part of every reason it is picked for ("; 212 upvotes; 1 day old"), made
    once per corpus."""
    reasons = corpus.paper_reasons.get(j)
    if reasons is None:
        parts = _paper_reasons(corpus.papers[j], corpus.now)
        reasons = corpus.paper_reasons[j] = "".join(f"; {part}" for part in parts)
    return reasons


def _picks(
    corpus: PreparedCorpus,
    profile: Profile,
    chosen: list[tuple[int, float]],
    relevance: np.ndarray,
    labels: dict[int, int],
    topic_labels: list[str],
    liked: sparse.csr_matrix | None,
    disliked: sparse.csr_matrix | None,
) -> list[Pick]:
    columns = [j for j, _ in chosen]
    relevances = relevance[columns].tolist()
    liked_near = _nearest(liked, corpus, columns)
    disliked_near = _nearest(disliked, corpus, columns)
    papers = corpus.papers
    out = []
    for n, (j, score) in enumerate(chosen):
        query = labels[j]
        if query >= 0:
            matched = topic_labels[query]
        elif query == LIKED and liked_near is not None:
            k = liked_near[n][0]
            matched = f"like '{_short_title(profile.liked[k].title)}' you liked"
        else:
            matched = "topical match"
        why = matched
        if disliked_near is not None:
            k, sim = disliked_near[n]
            if sim >= 0.2:
                why += (
                    f"; ranked down: near '{_short_title(profile.disliked[k].title)}' you disliked"
                )
        out.append(
            Pick(
                papers[j].id,
                round(score, 6),
                why + _reasons_of(corpus, j),
                round(relevances[n], 6),
                matched,
            )
        )
    return out
