"""A subscriber's own linear model over paper embeddings, learnt from their 👍/👎.

Scholar Inbox's way: once a person has rated papers, a logistic regression on the paper
embeddings separates what they liked from what they did not (and from the day's papers at
large, which they mostly would not pick), so their digest is ranked by one dot product per
paper. Its topics are a prior: while ratings are few, the topics' embeddings count as liked
examples, fading as ratings accumulate.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize


def fit_preference(
    liked: np.ndarray,
    disliked: np.ndarray,
    background: np.ndarray,
    *,
    topics: np.ndarray | None = None,
    prior_ratings: float = 3.0,
    c: float = 1.0,
) -> np.ndarray:
    """The unit weight vector (dimensions,) of a balanced logistic regression: liked papers
    (and, as a fading prior, the topics) against disliked papers and background papers.

    With no liked paper at all there is nothing to learn: the topics' mean is returned (or
    zeros without topics).
    """
    dims = background.shape[1] if background.size else liked.shape[1]
    if not len(liked):
        if topics is not None and len(topics):
            return np.asarray(normalize(topics.mean(axis=0, keepdims=True))[0])
        return np.zeros(dims)
    positives = [liked]
    weights = [np.ones(len(liked))]
    if topics is not None and len(topics):
        # The topics together weigh as much as `prior_ratings` liked papers, whatever their
        # number: a strong prior for one rating, a faint one for fifty.
        ratings = len(liked) + len(disliked)
        share = prior_ratings / (prior_ratings + ratings)
        positives.append(topics)
        weights.append(np.full(len(topics), share * len(liked) / len(topics)))
    negatives = [m for m in (disliked, background) if len(m)]
    if not negatives:
        return np.asarray(normalize(liked.mean(axis=0, keepdims=True))[0])
    x = np.vstack(positives + negatives)
    y = np.concatenate(
        [np.ones(sum(len(p) for p in positives)), np.zeros(sum(map(len, negatives)))]
    )
    # Disliked papers are rated: they count three times a background paper.
    negative_weights = [np.full(len(m), 3.0 if m is disliked else 1.0) for m in negatives]
    sample_weight = np.concatenate(weights + negative_weights)
    pos, neg = sample_weight[y == 1].sum(), sample_weight[y == 0].sum()
    sample_weight[y == 1] *= (pos + neg) / (2 * pos)
    sample_weight[y == 0] *= (pos + neg) / (2 * neg)
    model = LogisticRegression(C=c, max_iter=200)
    model.fit(x, y, sample_weight=sample_weight)
    return np.asarray(normalize(model.coef_)[0])
