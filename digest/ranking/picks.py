"""From scores to picks: topics taking turns, no near-duplicates, a one-line reason each."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from digest.ranking.corpus import PreparedCorpus
from digest.ranking.model import Pick, Profile, RankingConfig
from digest.ranking.signals import _paper_reasons, _short_title

# The label of a pick explained by a liked paper rather than a topic.
LIKED = -2


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
    topic_texts: list[str],
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
            matched = f"{_closeness(corpus, topic_texts[query], j)} {topic_labels[query]}"
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


def _closeness(corpus: PreparedCorpus, topic: str, j: int) -> str:
    """ "matches" when the paper is close to the topic in meaning (or when there is no sentence
    encoder to tell), "related to" when it passed on weaker evidence."""
    query = corpus.query_embeddings.get(topic)
    if query is None or corpus.embedded_t is None:
        return "matches"
    cosine = float(query @ corpus.embedded_t[:, j])
    return "matches" if cosine >= corpus.config.match_similarity else "related to"
