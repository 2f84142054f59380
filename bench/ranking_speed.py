"""Speed benchmark: 100,000 profiles x 5,000 papers, batch ranking against a per-subscriber loop.

- ours: one `TopicModel` fitted and the candidates prepared once for the run
  (`prepare_corpus`), then `rank_prepared` per batch of 500 profiles as the delivery
  pipeline does; each call scores its batch with matrix products.
- loop: the obvious alternative, one subscriber at a time: the same precomputed paper vectors
  and the same score parts (TF-IDF and latent cosine, recency), but a Python loop over
  subscribers with one small product each. It is timed on a sample of profiles and
  extrapolated to all of them (said so in the output).

Papers are the latest 5,000 of the real arXiv corpus (path on the command line); profiles are
generated: one to three topics drawn from phrases of real titles, some with excluded terms and
liked papers. Peak memory is the process's peak resident set size (ru_maxrss) measured after the
data is loaded and after our ranking.

With `--encoder minilm` (the product default) ours is hybrid, as delivery ranks: the papers'
stored embeddings (encoded once, at ingestion: read here from the benchmark's disk cache, their
one-off encoding reported apart) and every distinct topic of the day's profiles encoded by the
product's encoder inside the timed ranking, as a worker does each day. `--encoder tfidf` is the
fallback (and the figure of earlier releases).

    python bench/ranking_speed.py [--corpus PATH] [--profiles 100000] [--papers 5000]
        [--encoder minilm|tfidf]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import random
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.preprocessing import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.ranking import (  # noqa: E402
    Profile,
    RankingConfig,
    RankPaper,
    TopicModel,
    prepare_corpus,
    rank_prepared,
    recency,
)

DEFAULT_CORPUS = "../shared/data/arxiv-daily/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz"
BATCH = 500


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_papers(path: Path, n: int) -> list[RankPaper]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.append(row)
    rows.sort(key=lambda r: (r["first_seen"], r["id"]))
    papers = []
    for row in rows[-n:]:
        when = dt.datetime.fromisoformat(row["first_seen"]).replace(tzinfo=dt.UTC)
        papers.append(
            RankPaper(
                id=row["id"],
                title=" ".join(row["title"].split()),
                abstract=" ".join((row.get("summary") or "").split()),
                first_seen=when,
            )
        )
    return papers


def make_profiles(papers: list[RankPaper], n: int) -> list[Profile]:
    rng = random.Random(100_000)
    words = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
    phrases = []
    for p in papers:
        tokens = words.findall(p.title.lower())
        for k in range(len(tokens) - 1):
            phrases.append(f"{tokens[k]} {tokens[k + 1]}")
    phrases = sorted(set(phrases))
    excludes = ["survey", "benchmark", "medical", "quantum", "dataset"]
    profiles = []
    for i in range(n):
        topics = tuple(rng.sample(phrases, rng.randint(1, 3)))
        exclude = (rng.choice(excludes),) if rng.random() < 0.1 else ()
        liked = tuple(rng.sample(papers, 3)) if rng.random() < 0.2 else ()
        profiles.append(Profile(id=str(i), topics=topics, exclude=exclude, liked=liked))
    return profiles


def loop_rank(
    papers: list[RankPaper],
    profiles: list[Profile],
    model: TopicModel,
    now: dt.datetime,
    config: RankingConfig,
    embeddings: np.ndarray | None = None,
) -> list[list[str]]:
    """One subscriber at a time, with the paper side precomputed once (hybrid: each
    subscriber's topics encoded and fused with the TF-IDF cosine, as ours fuses BM25)."""
    vectors = model.transform([p.text for p in papers])
    vectors_t = vectors.T.tocsr()
    semantic = model.semantic(vectors) if embeddings is None else None
    prior = config.weight_recency * recency(papers, now, config.half_life_days)
    out = []
    for profile in profiles:
        texts = list(profile.topics)
        if profile.liked:
            texts.append(" ".join(p.text for p in profile.liked))
        q = model.transform(texts)
        sims = (q @ vectors_t).toarray()
        if semantic is not None:
            a = config.semantic_weight
            sims = (1 - a) * sims + a * (normalize(model.semantic(q)) @ semantic.T)
        if embeddings is not None and model.encoder is not None:
            dense = np.asarray(model.encoder(list(profile.topics))) @ embeddings.T
            d = config.dense_weight
            sims[: len(profile.topics)] = d * dense + (1 - d) * sims[: len(profile.topics)]
        rel = sims.max(axis=0)
        for term in profile.exclude:
            pattern = re.compile(r"\b" + re.escape(term) + r"\b")
            for j, p in enumerate(papers):
                if pattern.search(f"{p.title} {p.abstract}".casefold()):
                    rel[j] = -np.inf
        score = config.weight_topic * rel + prior
        top = np.argsort(-score)[: config.top_k]
        out.append([papers[j].id for j in top])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument("--papers", type=int, default=5000)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--loop-sample", type=int, default=1000)
    parser.add_argument("--encoder", choices=("minilm", "tfidf"), default="minilm")
    args = parser.parse_args()

    papers = load_papers(args.corpus, args.papers)
    profiles = make_profiles(papers, args.profiles)
    now = max(p.first_seen for p in papers if p.first_seen) + dt.timedelta(hours=8)
    config = RankingConfig()
    base_mb = peak_mb()
    print(
        f"{len(papers)} papers, {len(profiles)} profiles; peak RSS after loading {base_mb:.0f} MB",
        file=sys.stderr,
    )

    embeddings = encoder = None
    if args.encoder == "minilm":
        from bench.encoder import load_encoder
        from digest.encoder import load_encoder as product_encoder

        cached = load_encoder()
        e0 = time.process_time()
        embeddings = cached.encode([p.embedding_text for p in papers])
        print(
            f"paper embeddings: {len(papers)} read, {cached.encoded} of them encoded now "
            f"({time.process_time() - e0:.1f} s CPU; once per paper, at ingestion)",
            file=sys.stderr,
        )
        encoder = product_encoder(kind="minilm")
        if encoder is None:
            parser.error("the encoder is not installed: pip install -e . (or --encoder tfidf)")
        encoder.encode(["warm up"])
    topics = {t for p in profiles for t in p.topics}
    t0, c0 = time.perf_counter(), time.process_time()
    model = TopicModel.fit([p.text for p in papers], encoder=encoder.encode if encoder else None)
    candidates = prepare_corpus(papers, now=now, config=config, model=model, embeddings=embeddings)
    fit_wall = time.perf_counter() - t0
    picks = 0
    for start in range(0, len(profiles), BATCH):
        ranked = rank_prepared(candidates, profiles[start : start + BATCH])
        picks += sum(len(r) for r in ranked)
        done = start + BATCH
        if done % 20_000 == 0:
            print(f"  ours: {done} profiles, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    ours_wall, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    ours_mb = peak_mb()

    sample = profiles[: args.loop_sample]
    t1, c1 = time.perf_counter(), time.process_time()
    loop_rank(papers, sample, model, now, config, embeddings)
    loop_wall = time.perf_counter() - t1
    loop_cpu = time.process_time() - c1
    scale = len(profiles) / len(sample)

    print(
        f"papers: {len(papers)}, profiles: {len(profiles)} ({len(topics)} distinct topics), "
        f"batch: {BATCH} profiles a call, relevance: "
        f"{'hybrid (MiniLM + BM25)' if encoder else 'TF-IDF'}"
    )
    print(
        f"ours:  {ours_wall:.1f} s wall ({ours_cpu:.1f} s CPU), model fit and candidates "
        f"{fit_wall:.1f} s included, {picks} picks; {len(profiles) / ours_wall:,.0f} profiles/s"
    )
    print(
        f"loop:  {loop_wall:.1f} s wall for {len(sample)} profiles, extrapolated to "
        f"{loop_wall * scale:.0f} s ({loop_cpu * scale:.0f} s CPU) for {len(profiles)}"
    )
    print(f"ratio: ours is {loop_wall * scale / ours_wall:.1f}x faster than the loop (wall time)")
    print(f"peak RSS: {base_mb:.0f} MB after loading, {ours_mb:.0f} MB after our ranking")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
