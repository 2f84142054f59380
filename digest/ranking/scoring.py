"""Pure ranking: candidate papers and subscriber profiles in, explained picks out.

No database, no clock, no globals: `now` and the configuration are parameters, so the CLI, the
web preview, the benchmarks and the email all call the same `rank_papers`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.preprocessing import normalize

from digest.ranking.corpus import (
    PreparedCorpus,
    QueryMemo,
    TextRows,
    _encode,
    encode_memo,
    prepare_corpus,
    topic_meaning,
)
from digest.ranking.hybrid import fuse
from digest.ranking.lexical import TopicModel
from digest.ranking.model import Pick, Profile, RankingConfig, RankPaper
from digest.ranking.picks import _labels, _picks, _select
from digest.ranking.preference import fit_preference
from digest.ranking.signals import excluded_mask


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
    return np.asarray(sims)


def _centroids(
    model: TopicModel,
    groups: Sequence[Sequence[RankPaper]],
    *,
    embed: Callable[[Sequence[str]], np.ndarray] | None,
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
        embedded = normalize(owner @ embed(texts))
    return normalize(owner @ vectors).astype(np.float32).tocsr(), members, embedded


def _query_similarities(
    corpus: PreparedCorpus,
    texts: Sequence[str],
    config: RankingConfig,
    *,
    gated: bool = True,
    meanings: Callable[[list[str]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Each free-text query's float32 similarities to the papers (one row per text), each
    distinct text computed once per corpus and configuration (kept up to `query_memo_mb`)."""
    model = corpus.model
    key = (config, gated and corpus.lexical is not None)
    memo = corpus.query_rows.get(key)
    if memo is None:
        memo = corpus.query_rows[key] = QueryMemo(config.query_memo_mb * 2**20)
    rows: dict[str, np.ndarray] = {}
    for text in texts:
        if text not in rows:
            row = memo.get(text)
            if row is not None:
                rows[text] = row
    missing = [t for t in dict.fromkeys(texts) if t not in rows]
    if missing and corpus.lexical is not None and corpus.embedded_t is not None:
        queries = meanings(missing) if meanings is not None else encode_memo(corpus, model, missing)
        closeness = queries @ corpus.embedded_t
        words = corpus.lexical.scores(missing)
        sims = fuse(topic_meaning(corpus, queries, closeness, config), words, config.dense_weight)
        if gated:
            # Below the gate a paper is not sent for this topic: marked under any threshold.
            # A topic is matched today when one paper passes `gate_min` in the even mix of
            # meaning and words; then its papers must reach `topic_min_relevance` in what
            # ranks them. Otherwise nothing is sent for it.
            best = fuse(closeness, words, config.gate_dense_weight).max(axis=1, initial=-np.inf)
            sims[sims < config.topic_min_relevance] = -1.0
            sims[best < config.gate_min] = -1.0
        _remember(rows, memo, missing, sims)
        missing = []
    if missing:
        sims = _similarities(
            model,
            corpus,
            model.transform(missing),
            config,
            embedded=_encode(model, missing) if model.encoder else None,
        )
        _remember(rows, memo, missing, sims)
    return [rows[text] for text in texts]


def _remember(
    rows: dict[str, np.ndarray], memo: QueryMemo, texts: Sequence[str], sims: np.ndarray
) -> None:
    for text, row in zip(texts, sims.astype(np.float32), strict=True):
        # A copy: a view would keep the whole batch's matrix alive in the memo.
        rows[text] = row = row.copy()
        memo.put(text, row)


@dataclass
class _Topics:
    """A chunk's topic queries: profile i's are rows `first[i]` to `last[i]` of `sims`."""

    texts: list[str]
    first: np.ndarray
    last: np.ndarray
    sims: list[np.ndarray]


@dataclass
class _Feedback:
    """A chunk's liked and disliked papers, and where a liked paper's likeness beat the topics
    (the pick is then explained by the liked paper)."""

    liked: dict[int, sparse.csr_matrix]
    disliked: dict[int, sparse.csr_matrix]
    liked_won: np.ndarray | None


def _rank_chunk(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    now: dt.datetime,
    config: RankingConfig,
    model: TopicModel,
) -> list[list[Pick]]:
    relevance = np.zeros((len(profiles), len(corpus.papers)), dtype=np.float32)
    topics = _topic_relevance(corpus, profiles, config, relevance)
    feedback = _feedback_relevance(corpus, profiles, config, model, relevance)
    _block_excluded_and_seen(corpus, profiles, relevance)
    threshold = config.hybrid_min_relevance if corpus.lexical is not None else config.min_relevance
    negated, allowed = _negated_scores(corpus, config, relevance, threshold)
    topic_labels = [f"'{t.strip()}'" for t in topics.texts]
    out: list[list[Pick]] = []
    for i, (values, columns) in enumerate(_best_candidates(corpus, config, negated)):
        if allowed[i] == 0:
            out.append([])
            continue
        ordered = list(zip(values, columns, strict=True))
        labels = _labels(
            np.asarray(columns, dtype=np.int64),
            i,
            topics.first,
            topics.last,
            topics.sims,
            feedback.liked_won,
        )
        picks = _select(ordered, labels, corpus.duplicates, config)
        out.append(
            _picks(
                corpus,
                profiles[i],
                picks,
                relevance[i],
                labels,
                topic_labels,
                topics.texts,
                feedback.liked.get(i),
                feedback.disliked.get(i),
            )
        )
    return out


def _topic_relevance(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    config: RankingConfig,
    relevance: np.ndarray,
) -> _Topics:
    """Each profile's best single topic, blended with all its topics together, into
    `relevance`."""
    texts: list[str] = []
    first = np.zeros(len(profiles), dtype=np.int64)
    last = np.zeros(len(profiles), dtype=np.int64)
    for i, profile in enumerate(profiles):
        first[i] = len(texts)
        texts.extend(t for t in profile.topics if t.strip())
        last[i] = len(texts)
    if not texts:
        return _Topics(texts, first, last, [])
    sims = _query_similarities(corpus, texts, config)
    # The best single topic of each profile, its rows taken straight from the memo.
    for i in range(len(profiles)):
        own = sims[first[i] : last[i]]
        if own:
            relevance[i] = own[0]
            for row in own[1:]:
                np.maximum(relevance[i], row, out=relevance[i])
    multi = np.flatnonzero(last - first > 1).tolist()
    if multi and config.joint_topics > 0:
        # A joint query's key and BM25 text: its topics, each after a character no stored
        # topic has (NUL), so it is never taken for a topic typed with semicolons, nor for
        # another profile's topics split elsewhere.
        joint = ["".join("\x00" + t for t in profiles[i].topics if t.strip()) for i in multi]
        j = config.joint_topics
        topics_of = {text: texts[first[i] : last[i]] for text, i in zip(joint, multi, strict=True)}
        # The joint query ranks; each paper already passed (or failed) its own topic's gate.
        joint_rows = _query_similarities(
            corpus,
            joint,
            config,
            gated=False,
            meanings=lambda missing: _joint_meanings(corpus, [topics_of[t] for t in missing]),
        )
        for i, row in zip(multi, joint_rows, strict=True):
            relevance[i] = (1.0 - j) * relevance[i] + j * row
    return _Topics(texts, first, last, sims)


def _joint_meanings(corpus: PreparedCorpus, topics: Sequence[Sequence[str]]) -> np.ndarray:
    """Each joint query's meaning: the unit mean of its topics' embeddings (already encoded),
    not an encoding of the joined text: a 100,000-subscriber day encodes each distinct topic
    once and no joined text (about 2 ms of CPU each)."""
    rows = [encode_memo(corpus, corpus.model, own).mean(axis=0) for own in topics]
    return np.asarray(normalize(np.vstack(rows)))


def _feedback_relevance(
    corpus: PreparedCorpus,
    profiles: Sequence[Profile],
    config: RankingConfig,
    model: TopicModel,
    relevance: np.ndarray,
) -> _Feedback:
    """Liked papers as a second query (Rocchio: papers like them count as matches), disliked
    papers pushing their likes down, into `relevance`."""
    feedback = _Feedback({}, {}, None)
    hybrid = corpus.lexical is not None
    for kind, members in (("liked", feedback.liked), ("disliked", feedback.disliked)):
        owners_list = [i for i, p in enumerate(profiles) if getattr(p, kind)]
        if not owners_list:
            continue
        centroids, groups, embedded = _centroids(
            model,
            [getattr(profiles[i], kind) for i in owners_list],
            embed=(
                (lambda texts: encode_memo(corpus, model, texts))
                if hybrid or config.feedback_embedding_weight > 0
                else None
            ),
            memo=corpus.feedback_rows if model is corpus.model else None,
        )
        if hybrid and embedded is not None and corpus.embedded_t is not None:
            if kind == "liked" and config.preference_c > 0:
                embedded = _preferences(
                    corpus, corpus.embedded_t, [profiles[i] for i in owners_list], config
                )
            sims = fuse(
                embedded @ corpus.embedded_t,
                (centroids @ corpus.vectors_t).toarray(),
                config.liked_dense_weight,
            )
        else:
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
            liked_rel = config.liked_weight * sims
            better = liked_rel > relevance[owners]
            relevance[owners] = np.where(better, liked_rel, relevance[owners])
            feedback.liked_won = np.zeros(relevance.shape, dtype=bool)
            feedback.liked_won[owners] = better
        else:
            relevance[owners] -= config.disliked_weight * np.maximum(sims, 0.0)
    return feedback


def _block_excluded_and_seen(
    corpus: PreparedCorpus, profiles: Sequence[Profile], relevance: np.ndarray
) -> None:
    """Excluded and already-sent papers are marked in `relevance` itself (-inf, below any
    threshold), from their few coordinates: no dense mask per kind."""
    excluded = excluded_mask(corpus.papers, profiles, corpus.term_hits).tocoo()
    relevance[excluded.row, excluded.col] = -np.inf
    for i, profile in enumerate(profiles):
        seen = [corpus.index[pid] for pid in profile.seen if pid in corpus.index]
        if seen:
            relevance[i, seen] = -np.inf


def _negated_scores(
    corpus: PreparedCorpus, config: RankingConfig, relevance: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Minus each score (+inf where the paper may not be sent), and how many papers each
    profile may be sent."""
    blocked = relevance < threshold
    # Topical credit relative to the profile's best match of the day (floored by the scale), so
    # recency and trending weigh the same against it for every kind of profile. A row's maximum
    # is an allowed paper's whenever it reaches the threshold; else nothing is allowed.
    top_relevance = relevance.max(axis=1, initial=-np.inf)
    best = np.where(top_relevance >= threshold, np.maximum(top_relevance, 0.0), 0.0).astype(
        relevance.dtype
    )
    scale = np.maximum(best, config.relevance_scale)[:, None]
    # Written in place: these are the chunk's largest arrays, and each pass over them costs as
    # much as the arithmetic.
    topical = np.maximum(relevance, 0.0)
    topical *= config.weight_topic
    topical /= scale
    negated = np.add(topical, corpus.prior[None, :])
    del topical
    np.negative(negated, out=negated)
    np.copyto(negated, np.inf, where=blocked)
    allowed = relevance.shape[1] - np.count_nonzero(blocked, axis=1)
    return negated, allowed


def _best_candidates(
    corpus: PreparedCorpus, config: RankingConfig, negated: np.ndarray
) -> list[tuple[list[float], list[int]]]:
    """Each profile's best papers (minus the score, column), best first, blocked ones cut."""
    n_profiles, n_papers = negated.shape
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
    return [(value_lists[i][: counts[i]], column_lists[i][: counts[i]]) for i in range(n_profiles)]


def _preferences(
    corpus: PreparedCorpus,
    embedded_t: np.ndarray,
    profiles: Sequence[Profile],
    config: RankingConfig,
) -> np.ndarray:
    """(profiles x dimensions): each profile's own preference direction, learnt from its liked
    and disliked papers against the day's papers, with its topics as a prior."""
    n_papers = embedded_t.shape[1]
    step = max(1, n_papers // max(config.preference_background, 1))
    background = embedded_t[:, ::step].T
    model = corpus.model
    rows = []
    for profile in profiles:
        liked = encode_memo(corpus, model, [p.embedding_text for p in profile.liked])
        disliked = (
            encode_memo(corpus, model, [p.embedding_text for p in profile.disliked])
            if profile.disliked
            else np.zeros((0, background.shape[1]))
        )
        topics = [t for t in profile.topics if t.strip()]
        rows.append(
            fit_preference(
                liked,
                disliked,
                background,
                topics=encode_memo(corpus, model, topics) if topics else None,
                c=config.preference_c,
            )
        )
    return np.vstack(rows)
