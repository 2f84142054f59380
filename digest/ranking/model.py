"""The ranking's vocabulary: papers and profiles in, picks out, and the settings of a ranking."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

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
        # once, then the abstract; the same text as digest.encoder.paper_text, which the stored
        # embeddings were made of.
        return "\n".join(part for part in (self.title.strip(), self.abstract.strip()) if part)

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
    # Recency breaks near-ties: today's paper goes before one from two days ago only when they
    # are within about 6 % of the profile's best relevance (0.1 x (1 - 2^(-2/3)) = 0.037 of a
    # topical credit of 0.6). At 0.25 it reordered more than that: liked-paper P@10 -0.0055
    # [-0.0069, -0.0041] against 0.1 on the tuning months (bench/relevance.py --split tune --set
    # weight_recency=0.1; topics +0.001 [-0.000, 0.003]), where every candidate is at most three
    # announcement days old and age says nothing of relevance.
    weight_recency: float = 0.1
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
    # Hybrid relevance (digest/ranking/hybrid.py), used whenever the candidates come with
    # sentence embeddings: the dense share of the fused score that ranks topics (the rest is
    # BM25), the same share for liked papers (the rest is TF-IDF cosine to their centroid), the
    # relevance below which a paper is never sent, and the cosine from which a reason says
    # "matches" (the 99.9th percentile of unrelated topic-paper pairs, bench/calibrate.py).
    # Chosen on the benchmark's tuning months (bench/relevance.py --split tune).
    hybrid: bool = True
    dense_weight: float = 0.85
    # How topics are read against the day's papers for ranking (the gate and the reasons read
    # the plain cosine): `center_share` of the candidates' mean embedding is taken off the
    # topic and the papers before their cosine (what every paper shares says nothing about a
    # topic); then pseudo-relevance feedback mixes in, by `expansion_weight`, the cosine to the
    # centroid of the topic's `expansion_papers` closest papers (all the mean taken off).
    # Chosen on the tuning months (bench/relevance.py --split tune --days 2; of 0.5 / 0.5, 5 /
    # 10 / 20 papers, 0.3 / 0.5: paired against the plain cosine, topics P@10 ours +0.007
    # [-0.002, 0.017], relevance alone +0.013 [0.002, 0.026]). Under 100 candidates
    # (READ_AGAINST_MIN_PAPERS) the plain cosine ranks.
    center_share: float = 0.5
    expansion_papers: int = 5
    expansion_weight: float = 0.5
    liked_dense_weight: float = 0.7
    hybrid_min_relevance: float = 0.1
    match_similarity: float = 0.44
    # Nothing rather than noise. A topic is matched on a day when one paper reaches `gate_min`
    # in the even mix of meaning (the plain cosine) and words (BM25): the 99th percentile of
    # unrelated topic-paper pairs on the tuning months (bench/calibrate.py). Dense similarity
    # alone lets generic words through ("robot learning" close to any "learning" paper); words
    # alone miss paraphrases. A matched topic then sends the papers whose ranking relevance
    # (what orders them, read against the day) reaches `topic_min_relevance`: a weak interest
    # gets a short digest, a clear one also the papers that say it in other words. Chosen on
    # the tuning months as the floor sending no more on quiet days than the tiered floors on
    # the mix it replaced, with the best P@10 (bench/relevance.py --split tune: 0.25 / 0.28 /
    # 0.29 / 0.30 / 0.31; topics P@10 +0.008 [-0.002, 0.022] paired, 6.75 papers on a quiet
    # day instead of 6.96).
    gate_dense_weight: float = 0.5
    gate_min: float = 0.26
    topic_min_relevance: float = 0.29
    # With sentence embeddings, profiles with liked papers get their own logistic regression
    # (digest/ranking/preference.py) of this inverse regularisation (0: the liked papers'
    # centroid instead), against up to `preference_background` of the day's papers.
    preference_c: float = 1.0
    preference_background: int = 500
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


# An optional sentence-embedding backend: texts in, unit-norm rows out (see digest/encoder.py).
Encoder = Callable[[Sequence[str]], np.ndarray]
