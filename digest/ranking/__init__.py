"""Pure ranking: candidate papers and subscriber profiles in, explained picks out.

No database, no clock, no globals: `now` and the configuration are parameters, so the CLI, the
web preview, the benchmarks and the email all call the same `rank_papers`.

The rooms: `model` (papers, profiles, settings, picks), `lexical` (TF-IDF and its latent space,
with `svd`), `signals` (recency, trending, excluded terms, near-duplicates), `corpus` (the paper
side prepared once per run, with its memos), `scoring` (relevance and scores for a batch of
profiles) and `picks` (from scores to explained picks).
"""

from digest.ranking.corpus import (
    PreparedCorpus,
    QueryMemo,
    TextRows,
    prepare_corpus,
    remember_embeddings,
)
from digest.ranking.lexical import MIN_SEMANTIC_DOCS, TopicModel
from digest.ranking.model import Encoder, Pick, Profile, RankingConfig, RankPaper
from digest.ranking.picks import _row_dots
from digest.ranking.scoring import rank_papers, rank_prepared
from digest.ranking.signals import excluded_mask, near_duplicates, recency, trending
from digest.ranking.svd import truncated_svd

__all__ = [
    "MIN_SEMANTIC_DOCS",
    "Encoder",
    "Pick",
    "PreparedCorpus",
    "Profile",
    "QueryMemo",
    "RankPaper",
    "RankingConfig",
    "TextRows",
    "TopicModel",
    "_row_dots",
    "excluded_mask",
    "near_duplicates",
    "prepare_corpus",
    "rank_papers",
    "rank_prepared",
    "recency",
    "remember_embeddings",
    "trending",
    "truncated_svd",
]
