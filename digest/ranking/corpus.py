"""The paper side of a ranking, prepared once per run and shared by every batch, with its memos."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from sklearn.preprocessing import normalize

from digest.ranking.hybrid import Bm25
from digest.ranking.lexical import TopicModel
from digest.ranking.model import Encoder, RankingConfig, RankPaper
from digest.ranking.signals import near_duplicates, recency, trending


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
    # BM25 over the candidates, when relevance is hybrid (dense + lexical).
    lexical: Bm25 | None = None
    # Sentence embeddings of the texts read against this corpus (topics, liked and disliked
    # papers), each text encoded once per corpus: the encoder costs ~0.1 s a paper, and the
    # same topics and liked papers come back in every batch. Also how "matches" is decided.
    query_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    # (model corpus x papers): each paper's nearest corpus papers, for field votes.
    neighbours_t: sparse.csr_matrix | None = None
    # Papers matching each excluded term seen so far (a memo: same answer, computed once).
    term_hits: dict[str, list[int]] = field(default_factory=dict)
    # Each paper's place in the order of ids: ties in score go by id.
    id_order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Each picked paper's own part of the reason ("212 upvotes; 1 day old"), made once.
    paper_reasons: dict[int, str] = field(default_factory=dict)
    # Similarities of each topic text to the papers, by ranking configuration (a bounded memo).
    query_rows: dict[tuple[RankingConfig, bool], QueryMemo] = field(default_factory=dict)
    # TF-IDF rows of liked and disliked papers by text: a paper many subscribers liked is
    # tokenised once (a bounded memo).
    feedback_rows: TextRows = field(default_factory=lambda: TextRows(FEEDBACK_MEMO_ROWS))
    # Each candidate's column in `embedded_t` by its embedding text, made on first use: a liked
    # paper that is a candidate is read from there, never encoded again.
    candidate_columns: dict[str, int] | None = None
    # By share of the mean taken off: the candidates' mean embedding and (dimensions x papers)
    # of their unit rows after taking that share of it off, made on first use.
    centered: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


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
    embeddings: np.ndarray | None = None,
    encoder: Encoder | None = None,
) -> PreparedCorpus:
    """Vectors, recency, trending and near-duplicates of the candidates, for `rank_prepared`.

    Without a `model`, one is fitted on the candidates themselves. `embeddings` are the
    candidates' sentence embeddings (papers x dimensions, unit rows, computed once when they
    were stored); without them a model with an encoder encodes the candidates here. `encoder`
    (texts in, unit rows out) goes with a model fitted here, to read topics as queries.
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
                [p.text for p in papers], rows_ready=find_duplicates, encoder=encoder
            )
        else:
            vectors = model.transform([p.text for p in papers])
            find_duplicates(vectors)
        if duplicates is None:
            raise RuntimeError("the TF-IDF rows never reached the duplicate search")
        pairs = duplicates.result()
    embedded = None
    if embeddings is not None:
        embedded = normalize(np.asarray(embeddings, dtype=np.float64))
    elif model.encoder is not None and papers:
        embedded = _encode(model, [p.embedding_text for p in papers])
    lexical = None
    if embedded is not None and config.hybrid:
        lexical = Bm25([p.text for p in papers])
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
        embedded_t=None if embedded is None else np.ascontiguousarray(embedded.T),
        lexical=lexical,
        neighbours_t=None if neighbours is None else neighbours.T.tocsr(),
    )


QUERY_EMBEDDINGS_MAX = 100_000  # about 150 MB of rows


def encode_memo(corpus: PreparedCorpus, model: TopicModel, texts: Sequence[str]) -> np.ndarray:
    """Unit rows for `texts`, each distinct text encoded once per corpus (for the corpus's own
    model; another model's encoder is not remembered)."""
    if model is not corpus.model:
        return _encode(model, texts)
    memo = corpus.query_embeddings
    missing = [t for t in dict.fromkeys(texts) if t not in memo]
    found: dict[str, np.ndarray] = {}
    if missing and corpus.embedded_t is not None:
        if corpus.candidate_columns is None:
            corpus.candidate_columns = {p.embedding_text: i for i, p in enumerate(corpus.papers)}
        columns = corpus.candidate_columns
        known = [t for t in missing if t in columns]
        if known:
            rows = corpus.embedded_t[:, [columns[t] for t in known]].T
            found.update(zip(known, rows, strict=True))
            missing = [t for t in missing if t not in columns]
    if missing:
        found.update(zip(missing, _encode(model, missing), strict=True))
    if not texts:
        return np.zeros((0, 0))
    # Read before remembering: a full memo is cleared to make room.
    out = np.stack([found[t] if t in found else memo[t] for t in texts])
    if found:
        remember_embeddings(corpus, list(found), np.stack(list(found.values())))
    return out


def centered_columns(corpus: PreparedCorpus, share: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' mean embedding, and their embeddings with `share` of it taken off,
    renormalised, as (dimensions x papers)."""
    if corpus.embedded_t is None:
        raise RuntimeError("centered_columns() needs a corpus with embeddings")
    if share not in corpus.centered:
        rows = corpus.embedded_t.T
        mean = rows.mean(axis=0)
        corpus.centered[share] = (mean, np.ascontiguousarray(normalize(rows - share * mean).T))
    return corpus.centered[share]


# Fewer candidates than this say little about what the day's papers share, or about a topic's
# closest ones: topics are then read by the plain cosine.
READ_AGAINST_MIN_PAPERS = 100


def topic_meaning(
    corpus: PreparedCorpus,
    queries: np.ndarray,
    closeness: np.ndarray,
    config: RankingConfig,
) -> np.ndarray:
    """(queries x papers): what ranks topics in meaning. The plain cosine (`closeness`), or,
    as the configuration says, the cosine with a share of the candidates' mean taken off,
    mixed with the cosine to the centroid of each topic's closest papers."""
    share, k, weight = config.center_share, config.expansion_papers, config.expansion_weight
    if (share <= 0 and (k <= 0 or weight <= 0)) or closeness.shape[1] < READ_AGAINST_MIN_PAPERS:
        return closeness
    meaning = closeness
    if share > 0:
        mean, centered_t = centered_columns(corpus, share)
        meaning = normalize(queries - share * mean) @ centered_t
    if k > 0 and weight > 0:
        k = min(k, meaning.shape[1])
        top = np.argpartition(-meaning, k - 1, axis=1)[:, :k]
        _, apart_t = centered_columns(corpus, 1.0)
        centroids = normalize(apart_t.T[top].mean(axis=1))
        meaning = (1.0 - weight) * meaning + weight * (centroids @ apart_t)
    return np.asarray(meaning)


def remember_embeddings(corpus: PreparedCorpus, texts: Sequence[str], rows: np.ndarray) -> None:
    """Unit rows of `texts` (read from the store, or just encoded) for `encode_memo` to find."""
    memo = corpus.query_embeddings
    if len(memo) + len(texts) > QUERY_EMBEDDINGS_MAX:
        memo.clear()
    memo.update(zip(texts, normalize(np.asarray(rows, dtype=np.float64)), strict=True))


def _encode(model: TopicModel, texts: Sequence[str]) -> np.ndarray:
    if model.encoder is None:
        raise RuntimeError("_encode() needs a model with an encoder")
    return np.asarray(normalize(np.asarray(model.encoder(list(texts)), dtype=np.float64)))
