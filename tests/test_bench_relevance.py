"""The relevance benchmark's own parts: its BM25 scores as rank-bm25 does, its metrics and
intervals behave, and the committed cases keep the protocol's promises."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import relevance  # noqa: E402


def test_bm25_scores_as_rank_bm25_okapi():
    rank_bm25 = pytest.importorskip("rank_bm25")
    rng = random.Random(1)
    words = "robot grasp policy model data graph speech audio privacy attack the of".split()
    corpus = [[rng.choice(words) for _ in range(rng.randint(1, 40))] for _ in range(60)]
    query = [rng.choice(words) for _ in range(50)] + ["unseen"]
    expected = rank_bm25.BM25Okapi(corpus).get_scores(query)
    assert np.allclose(relevance.BM25(corpus).scores(query), expected)


def test_ndcg_and_precision_parts():
    assert relevance.ndcg([True] * 3 + [False] * 7, 3) == pytest.approx(1.0)
    assert relevance.ndcg([False] * 10, 5) == 0.0
    assert 0 < relevance.ndcg([False, True], 1) < 1


def test_bootstrap_interval_holds_the_mean_and_shrinks_with_more_profiles():
    rng = np.random.default_rng(0)
    small, large = rng.random(20), rng.random(2000)
    draws = lambda n: rng.integers(0, n, size=(1000, n))  # noqa: E731
    mean, lo, hi = relevance.bootstrap(small, draws(20))
    assert lo < mean < hi
    _, lo2, hi2 = relevance.bootstrap(large, draws(2000))
    assert hi2 - lo2 < (hi - lo) / 3


def test_cases_keep_the_protocol():
    cases = relevance.load_cases(relevance.DEFAULT_CASES)
    categories = {i.category for i in cases.interests}
    assert len(cases.interests) >= 60 and len(categories) >= 20
    assert not categories & {"cs.CV", "cs.AI", "cs.CL", "cs.LG"}
    assert {i.kind for i in cases.interests} == {"short", "vague", "multi", "jargon"}
    tune, report, fresh, holdout, liked = (
        set(cases.months[k]) for k in ("tune", "report", "fresh", "holdout", "liked")
    )
    assert len(tune | report) >= 3 and not tune & report and not liked & (tune | report)
    assert not fresh & (tune | report | liked)
    assert not holdout & (tune | report | fresh | liked)


def test_relevance_only_opens_every_floor_of_the_gate():
    # ours-rel is relevance without threshold or gate: every floor a paper could fall under is
    # open.
    from digest.ranking import RankingConfig

    config = relevance.relevance_only(RankingConfig())
    assert config.gate_min < 0 and config.topic_min_relevance < 0
    assert config.hybrid_min_relevance == config.min_relevance == 0
    assert config.weight_recency == config.weight_trending == 0


def test_quiet_days_leave_out_the_profiles_category_and_count_what_is_sent():
    import datetime as dt

    day = dt.date(2026, 3, 4)
    docs = [
        relevance.Doc(f"{c}{n}", f"{c} paper {n}", "", frozenset({c}), day)
        for c in ("cs.RO", "cs.CR")
        for n in range(15)
    ]
    profiles = [
        relevance.BenchProfile("ro", "topics", "cs.RO", ("robots",), (), "short"),
        relevance.BenchProfile("cr", "topics", "cs.CR", ("attacks",), (), "short"),
    ]
    seen: list[set[str]] = []

    def gated(cands, profs, now):
        # Sends the robots profile two papers, the other nothing.
        seen.append({c for d in cands for c in d.categories})
        return [list(range(2)) if p.id == "ro" else [] for p in profs]

    out = relevance.score_quiet(gated, [(day, docs)], profiles)
    assert sorted(map(sorted, seen)) == [["cs.CR"], ["cs.RO"]]
    assert out["quiet_sent"].tolist() == [2.0, 0.0]
    assert out["quiet_empty"].tolist() == [0.0, 1.0]
    every = relevance.score_quiet(
        lambda c, ps, now: [list(range(len(c)))] * len(ps), [(day, docs)], profiles
    )
    assert every["quiet_sent"].tolist() == [relevance.K, relevance.K]
