"""TF-IDF and its latent-semantic (LSA) space, fitted on a paper corpus."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.preprocessing import normalize

from digest.ranking.model import Encoder, RankingConfig
from digest.ranking.svd import truncated_svd

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
        try:
            counts = counter.fit_transform(texts)
        except ValueError:
            # Not one word outside the stop list (an empty store, a day with no candidates):
            # a one-term vocabulary that no paper has, so every similarity is 0.
            counter = CountVectorizer(**{**params, "stop_words": None, "min_df": 1, "max_df": 1.0})
            counts = counter.fit_transform([*texts, "placeholder"])[: len(texts)]
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
        return np.asarray(normalize(dense))

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
