import datetime as dt

from digest.ranking import RankingConfig, rank_papers
from tests.factories import NOW, make_profile, make_rank_paper

DIFFUSION = "Diffusion models for image generation"
DIFFUSION_ABSTRACT = "We train diffusion models that denoise images step by step."


def corpus():
    return [
        make_rank_paper(id="diff", title=DIFFUSION, abstract=DIFFUSION_ABSTRACT),
        make_rank_paper(
            id="robots",
            title="Legged robots that walk",
            abstract="Legged robots learn locomotion with reinforcement learning.",
        ),
        *[make_rank_paper() for _ in range(8)],
    ]


def ids(picks):
    return [p.paper_id for p in picks]


def test_topic_match_comes_first_and_says_why():
    (picks,) = rank_papers(corpus(), [make_profile(topics=("diffusion models",))], now=NOW)
    assert ids(picks)[0] == "diff"
    assert "matches 'diffusion models'" in picks[0].why
    assert "1 day old" in picks[0].why
    assert "robots" not in ids(picks)  # below the relevance threshold: not sent at all


def test_each_profile_gets_its_own_ranking_in_one_batch():
    profiles = [
        make_profile(id="a", topics=("diffusion models",)),
        make_profile(id="b", topics=("legged robots",)),
        make_profile(id="c", topics=()),
    ]
    a, b, c = rank_papers(corpus(), profiles, now=NOW)
    assert ids(a)[0] == "diff" and ids(b)[0] == "robots" and c == []


def test_excluded_term_never_appears():
    profile = make_profile(topics=("diffusion models", "legged robots"), exclude=("denoise",))
    (picks,) = rank_papers(corpus(), [profile], now=NOW)
    assert "diff" not in ids(picks) and "robots" in ids(picks)


def test_already_sent_paper_never_appears():
    profile = make_profile(topics=("diffusion models",), seen=frozenset({"diff"}))
    (picks,) = rank_papers(corpus(), [profile], now=NOW)
    assert "diff" not in ids(picks)


def test_newer_outranks_otherwise_identical_older():
    papers = [
        make_rank_paper(
            id="old",
            title=DIFFUSION,
            abstract=DIFFUSION_ABSTRACT,
            published=NOW - dt.timedelta(days=5),
        ),
        make_rank_paper(
            id="new",
            title=DIFFUSION,
            abstract=DIFFUSION_ABSTRACT,
            published=NOW - dt.timedelta(days=1),
        ),
        make_rank_paper(),
    ]
    config = RankingConfig(duplicate_similarity=1.01)  # identical texts: keep both
    (picks,) = rank_papers(papers, [make_profile()], now=NOW, config=config)
    assert ids(picks)[:2] == ["new", "old"]


def test_more_upvotes_never_lowers_a_score():
    scores = []
    for votes in (None, 0, 1, 10, 100, 10_000):
        papers = [
            make_rank_paper(id="p", title=DIFFUSION, abstract=DIFFUSION_ABSTRACT, upvotes=votes),
            make_rank_paper(),
            make_rank_paper(),
        ]
        (picks,) = rank_papers(papers, [make_profile()], now=NOW)
        scores.append(picks[0].score)
    assert scores == sorted(scores) and scores[-1] > scores[0]


def test_near_duplicates_are_not_both_picked():
    papers = [
        make_rank_paper(id="a", title=DIFFUSION, abstract=DIFFUSION_ABSTRACT),
        make_rank_paper(id="b", title=DIFFUSION + ".", abstract=DIFFUSION_ABSTRACT),
        make_rank_paper(
            id="c",
            title="Video diffusion models",
            abstract="Diffusion models generate videos frame by frame.",
        ),
        make_rank_paper(),
    ]
    (picks,) = rank_papers(papers, [make_profile()], now=NOW)
    assert len({"a", "b"} & set(ids(picks))) == 1 and "c" in ids(picks)


def test_same_input_gives_same_output():
    first = rank_papers(corpus(), [make_profile()], now=NOW)
    second = rank_papers(corpus(), [make_profile()], now=NOW)
    assert first == second


def test_top_k_limits_the_digest():
    papers = [
        make_rank_paper(
            title=f"Diffusion models variant {i}",
            abstract=f"Diffusion models with trick number {i} and {i * 7}.",
        )
        for i in range(30)
    ]
    (picks,) = rank_papers(papers, [make_profile()], now=NOW, config=RankingConfig(top_k=5))
    assert len(picks) == 5
