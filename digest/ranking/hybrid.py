"""Hybrid relevance: sentence-embedding similarity fused with BM25, for papers encoded once.

Dense similarity (a sentence encoder's cosine between a topic, read as a query, and a paper's
title and abstract) finds papers that mean what the topic says in other words; BM25 keeps the
exact terms a person typed ("SLAM", "RLHF") worth something. Both are put on one scale before
they are fused, so the fused relevance has a meaning that a threshold can rely on:

- dense: the cosine, unchanged (for all-MiniLM-L6-v2 a random topic-paper pair sits near 0.05,
  a paper on the topic above 0.4);
- lexical: BM25 over the candidates divided by the most the query could score (every query term
  present at saturation), so 1.0 means "all the words, often".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer


class Bm25:
    """Okapi BM25 (k1, b) over a fixed set of documents, scored for many queries at once."""

    def __init__(self, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.vectorizer = CountVectorizer(
            stop_words="english", strip_accents="unicode", dtype=np.float32
        )
        try:
            counts = self.vectorizer.fit_transform(list(texts)).tocsr()
        except ValueError:  # no words at all (an empty day): every score is 0
            self.vectorizer.fit(["empty"])
            counts = sparse.csr_matrix((len(texts), 1), dtype=np.float32)
        n = max(counts.shape[0], 1)
        df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
        # The "plus one" form (Lucene's): never negative for terms in most documents.
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        self.unseen_idf = float(np.log1p((n + 0.5) / 0.5))
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        norm = k1 * (1.0 - b + b * lengths / max(float(lengths.mean()) if n else 1.0, 1e-9))
        weights = counts.astype(np.float64).tocoo()
        tf = weights.data
        weights.data = self.idf[weights.col] * tf * (k1 + 1.0) / (tf + norm[weights.row])
        # (terms x documents), for query rows times this.
        self.weights_t = weights.T.tocsr()

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(queries x documents) BM25, each row over the most its query could score: 0..1."""
        present = self.vectorizer.transform(list(queries)).tocsr()
        present.data[:] = 1.0
        raw = (present @ self.weights_t).toarray()
        # The ceiling counts every word of the query, those no candidate has too (at the idf of
        # a word in no document): "robot learning" over papers that never say "robot" is at
        # most half a match, not a full one for "learning".
        analyze = self.vectorizer.build_analyzer()
        vocabulary = self.vectorizer.vocabulary_
        ceiling = np.array(
            [
                sum(
                    self.idf[vocabulary[w]] if w in vocabulary else self.unseen_idf
                    for w in set(analyze(q))
                )
                for q in queries
            ]
        ) * (self.k1 + 1.0)
        out: np.ndarray = np.zeros(raw.shape)
        np.divide(raw, ceiling[:, None], out=out, where=ceiling[:, None] > 0)
        return out


def fuse(dense: np.ndarray, lexical: np.ndarray, dense_weight: float) -> np.ndarray:
    """The fused relevance: a convex mix of the two scales."""
    return dense_weight * dense + (1.0 - dense_weight) * lexical
