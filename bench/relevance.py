"""Relevance benchmark: our ranker against the methods of today's digest tools, on real arXiv days.

Protocol (issue 4). Each interest is a few words of free text tied to one arXiv category; a paper
is relevant to it when the paper lists that category. A digest day's candidates are the papers
first announced on that day or the two announcement days before it. Two kinds of profile:

- topic profiles: the interest's free-text topics only;
- liked-paper profiles: five papers of the category, drawn from an earlier month, no topics.

Methods, all scored on the same candidates in one run:

- bm25: Okapi BM25 (rank-bm25) over the day's candidates; the query is the topics, or the liked
  papers' text.
- tfidf: TF-IDF cosine to the topics, or to the centroid of the liked papers.
- svm: the arxiv-sanity-lite method, a linear SVM per profile on TF-IDF features with the liked
  papers (or the topic text) as positives and the day's candidates as negatives (C=0.01,
  balanced classes, as in arxiv-sanity-lite's serve.py).
- minilm: the zotero-arxiv-daily method, all-MiniLM-L6-v2 sentence embeddings (the product's
  encoder, digest/encoder.py: the int8 ONNX graph), candidates ranked by the mean cosine to the
  liked papers, or to the topics.
- ours: `digest.ranking.rank_papers` with its default configuration and one `TopicModel` fitted
  for the run, exactly as the delivery pipeline calls it.
- ours+minilm: the same with the paper encoder (`digest.encoder`) blended into topic relevance
  (liked papers are compared without it, the ranker's default).

Every method gets the same background corpus to fit on (papers first announced in the months
before the last digest day). Precision@10 counts a missing pick (a ranker may send fewer than ten
papers) as not relevant. CPU time is process time (all threads) spent in the method, fitting
included; the embedding model's one-off load is reported apart.

    pip install torch==2.13.0        # first, so that pip takes the CPU build
    pip install -e '.[bench]'
    HF_HUB_OFFLINE=1 python bench/relevance.py [--corpus PATH] [--skip minilm --skip ours+minilm]

Tune on May, report June (the default), so that settings are not fitted to the reported days; May
takes its liked papers from February, which neither June's profiles nor the background use:

    python bench/relevance.py --month 2026-05 --liked-month 2026-02 --only ours
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import gzip
import json
import math
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.ranking import Profile, RankingConfig, RankPaper, TopicModel, rank_papers  # noqa: E402

DEFAULT_CORPUS = "../shared/data/arxiv-daily/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz"
CATEGORY = re.compile(r"^[a-z-]+(\.[A-Za-z-]+)?$")
K = 10

# Our own interests, each tied to one arXiv category. Broad categories (cs.CV, cs.AI, cs.CL,
# cs.LG) are left out: most candidates list them, so any ranker would score well.
INTERESTS: list[tuple[str, tuple[str, ...]]] = [
    ("cs.RO", ("robot manipulation", "legged locomotion", "autonomous navigation")),
    ("cs.IR", ("recommender systems", "information retrieval and search ranking")),
    ("cs.CR", ("security and privacy attacks", "jailbreak defenses")),
    ("cs.SD", ("speech and audio generation", "music")),
    ("cs.GR", ("3D rendering and graphics", "gaussian splatting", "avatars")),
    ("cs.HC", ("human-computer interaction user study", "interfaces for people")),
    ("cs.IT", ("information theory", "wireless communication and channel coding")),
    ("eess.IV", ("medical image reconstruction", "MRI and CT imaging")),
    ("cs.CY", ("AI and society", "education and policy")),
    ("cs.MA", ("multi-agent systems", "cooperation between agents")),
    ("cs.GT", ("game theory", "mechanism design and auctions")),
    ("cs.SE", ("software engineering", "code generation and program repair")),
    ("cs.DB", ("databases and SQL", "query processing")),
    ("cs.CE", ("computational engineering and finance", "simulation of physical systems")),
]


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    abstract: str
    categories: frozenset[str]
    first_seen: dt.date

    @property
    def text(self) -> str:
        return f"{self.title}. {self.abstract}"


@dataclass(frozen=True)
class BenchProfile:
    id: str
    kind: str  # "topics" or "liked"
    category: str
    topics: tuple[str, ...]
    liked: tuple[Doc, ...]


def load_corpus(path: Path) -> list[Doc]:
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            docs.append(
                Doc(
                    id=row["id"],
                    title=" ".join(row["title"].split()),
                    abstract=" ".join((row.get("summary") or "").split()),
                    categories=frozenset(c for c in row["categories"] if CATEGORY.match(c)),
                    first_seen=dt.date.fromisoformat(row["first_seen"]),
                )
            )
    return docs


def make_profiles(docs: Sequence[Doc], liked_month: str, per_interest: int) -> list[BenchProfile]:
    rng = random.Random(4)
    profiles = []
    for category, topics in INTERESTS:
        profiles.append(BenchProfile(f"{category}/topics", "topics", category, topics, ()))
        pool = [
            d
            for d in docs
            if d.first_seen.isoformat().startswith(liked_month) and category in d.categories
        ]
        for n in range(per_interest):
            liked = tuple(rng.sample(pool, 5))
            profiles.append(BenchProfile(f"{category}/liked{n}", "liked", category, (), liked))
    return profiles


def ndcg(rels: Sequence[bool], n_relevant: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(rels[:K]) if r)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(K, n_relevant)))
    return dcg / ideal if ideal else 0.0


# A method gets (candidates, profiles, now) and returns, per profile, candidate indices best first.
Method = Callable[[Sequence[Doc], Sequence[BenchProfile], dt.datetime], list[list[int]]]


def top_k(scores: np.ndarray) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return order[:K].tolist()


def method_ours(
    background: Sequence[Doc],
    encoder_factory: Callable[[], Any] | None = None,
    config: RankingConfig | None = None,
) -> tuple[Method, Callable[[], None]]:
    state: dict[str, TopicModel] = {}

    def fit() -> None:
        encoder = encoder_factory() if encoder_factory else None
        state["model"] = TopicModel.fit([to_rank(d).text for d in background], encoder=encoder)

    def run(cands: Sequence[Doc], profiles: Sequence[BenchProfile], now: dt.datetime):
        papers = [to_rank(d) for d in cands]
        index = {p.id: i for i, p in enumerate(papers)}
        ranked = rank_papers(
            papers,
            [
                Profile(id=p.id, topics=p.topics, liked=tuple(to_rank(d) for d in p.liked))
                for p in profiles
            ],
            now=now,
            config=dataclasses.replace(config or RankingConfig(), top_k=K),
            model=state["model"],
        )
        return [[index[pick.paper_id] for pick in picks] for picks in ranked]

    return run, fit


def method_ours_minilm(
    background: Sequence[Doc], config: RankingConfig | None = None
) -> tuple[Method, Callable[[], None]]:
    """Ours with the paper encoder blended into topic relevance."""
    return method_ours(background, encoder_factory=_memo_encoder, config=config)


def _memo_encoder() -> Callable[[Sequence[str]], np.ndarray]:
    """The product's encoder, remembering the texts it has encoded (the benchmark encodes
    the same candidates for every profile)."""
    from digest.encoder import load_encoder

    encoder = load_encoder(kind="minilm")
    if encoder is None:
        raise SystemExit("the encoder's packages are not installed (see pyproject dependencies)")
    memo: dict[str, np.ndarray] = {}

    def encode(texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in memo})
        if missing:
            memo.update(zip(missing, encoder.encode(missing), strict=True))
        return np.stack([memo[t] for t in texts])

    return encode


def to_rank(doc: Doc) -> RankPaper:
    # Announcement morning; categories are left out: they are the benchmark's labels.
    when = dt.datetime.combine(doc.first_seen, dt.time(0), tzinfo=dt.UTC)
    return RankPaper(id=doc.id, title=doc.title, abstract=doc.abstract, first_seen=when)


def method_tfidf(background: Sequence[Doc]) -> tuple[Method, Callable[[], None]]:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    state: dict[str, TfidfVectorizer] = {}

    def fit() -> None:
        vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, dtype=np.float32)
        vec.fit([d.text for d in background])
        state["vec"] = vec

    def run(cands, profiles, now):
        vec = state["vec"]
        x = vec.transform([d.text for d in cands])
        out = []
        for p in profiles:
            if p.kind == "topics":
                q = vec.transform([" ".join(p.topics)])
            else:
                q = sparse.csr_matrix(vec.transform([d.text for d in p.liked]).mean(axis=0))
            out.append(top_k((x @ q.T).toarray().ravel()))
        return out

    return run, fit


def method_bm25(background: Sequence[Doc]) -> tuple[Method, Callable[[], None]]:
    from rank_bm25 import BM25Okapi
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    token = re.compile(r"[a-z0-9]+")

    def tokens(text: str) -> list[str]:
        return [t for t in token.findall(text.lower()) if t not in ENGLISH_STOP_WORDS]

    def run(cands, profiles, now):
        bm25 = BM25Okapi([tokens(d.text) for d in cands])
        out = []
        for p in profiles:
            query = " ".join(p.topics) if p.kind == "topics" else " ".join(d.text for d in p.liked)
            out.append(top_k(np.asarray(bm25.get_scores(tokens(query)))))
        return out

    return run, lambda: None


def method_svm(background: Sequence[Doc]) -> tuple[Method, Callable[[], None]]:
    from scipy import sparse
    from sklearn import svm
    from sklearn.feature_extraction.text import TfidfVectorizer

    state: dict[str, TfidfVectorizer] = {}

    def fit() -> None:
        # arxiv-sanity-lite's compute.py: word 1-2 grams, sublinear tf, l2 norm.
        vec = TfidfVectorizer(
            input="content",
            encoding="utf-8",
            decode_error="replace",
            strip_accents="unicode",
            lowercase=True,
            analyzer="word",
            stop_words="english",
            token_pattern=r"(?u)\b[a-zA-Z_][a-zA-Z0-9_]+\b",
            ngram_range=(1, 2),
            max_features=20000,
            norm="l2",
            use_idf=True,
            smooth_idf=True,
            sublinear_tf=True,
            max_df=0.1,
            min_df=5,
            dtype=np.float32,
        )
        vec.fit([d.text for d in background])
        state["vec"] = vec

    def run(cands, profiles, now):
        vec = state["vec"]
        x = vec.transform([d.text for d in cands])
        out = []
        for p in profiles:
            positives = [" ".join(p.topics)] if p.kind == "topics" else [d.text for d in p.liked]
            xp = vec.transform(positives)
            train = sparse.vstack([xp, x]).tocsr()
            y = np.r_[np.ones(xp.shape[0]), np.zeros(x.shape[0])]
            clf = svm.LinearSVC(
                class_weight="balanced", verbose=False, max_iter=10000, tol=1e-6, C=0.01
            )
            clf.fit(train, y)
            out.append(top_k(clf.decision_function(x)))
        return out

    return run, fit


def method_minilm(background: Sequence[Doc]) -> tuple[Method, Callable[[], None]]:
    state: dict[str, object] = {}
    cache: dict[str, np.ndarray] = {}

    def fit() -> None:
        state["model"] = _memo_encoder()

    def encode(texts: list[str]) -> np.ndarray:
        return state["model"](texts)  # type: ignore[operator]

    def embed(docs: Sequence[Doc]) -> np.ndarray:
        missing = [d for d in docs if d.id not in cache]
        if missing:
            for d, v in zip(missing, encode([d.text for d in missing]), strict=True):
                cache[d.id] = v
        return np.stack([cache[d.id] for d in docs])

    def run(cands, profiles, now):
        x = embed(cands)
        out = []
        for p in profiles:
            q = encode(list(p.topics)) if p.kind == "topics" else embed(p.liked)
            # zotero-arxiv-daily: the mean similarity to the library (or the topics).
            out.append(top_k((x @ q.T).mean(axis=1)))
        return out

    return run, fit


METHODS = {
    "bm25": method_bm25,
    "tfidf": method_tfidf,
    "svm": method_svm,
    "minilm": method_minilm,
    "ours": method_ours,
    "ours+minilm": method_ours_minilm,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument(
        "--month",
        default="2026-06",
        help="month of the digest days; tune on another month than the one reported",
    )
    parser.add_argument("--days", type=int, default=6, help="digest days in --month")
    parser.add_argument("--window", type=int, default=3, help="announcement days per digest")
    parser.add_argument("--liked-month", default="2026-01", help="where liked papers come from")
    parser.add_argument("--liked-profiles", type=int, default=3, help="per interest")
    parser.add_argument("--background-from", default="2026-03-01")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(METHODS))
    parser.add_argument("--only", action="append", default=[], choices=sorted(METHODS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one of our RankingConfig settings (e.g. weight_recency=0), to see what a "
        "part of the score costs or gains here; the reported table uses the defaults",
    )
    args = parser.parse_args(argv)
    # Our ranker's settings: the defaults, unless `--set` changes some (not for the report).
    ranking = RankingConfig()
    fields = [f.name for f in dataclasses.fields(RankingConfig)]
    for item in args.set:
        name, _, value = item.partition("=")
        usage = f"--set {item}: expected FIELD=NUMBER, FIELD one of {', '.join(fields)}"
        if name not in fields:
            parser.error(usage)
        try:
            ranking = dataclasses.replace(ranking, **{name: type(getattr(ranking, name))(value)})
        except ValueError:
            parser.error(usage)
    if args.set:
        print(f"our settings changed: {', '.join(args.set)}", file=sys.stderr)
    methods: dict[str, Callable[[Sequence[Doc]], tuple[Method, Callable[[], None]]]] = {
        **METHODS,
        "ours": functools.partial(method_ours, config=ranking),
        "ours+minilm": functools.partial(method_ours_minilm, config=ranking),
    }

    print(f"Reading {args.corpus} ...", file=sys.stderr)
    docs = load_corpus(args.corpus)
    by_day: dict[dt.date, list[Doc]] = defaultdict(list)
    for d in docs:
        by_day[d.first_seen].append(d)
    month = sorted(day for day in by_day if day.isoformat().startswith(args.month))
    step = max(1, len(month) // args.days)
    digest_days = month[args.window :: step][: args.days]
    all_days = sorted(by_day)
    last = digest_days[-1]
    background = [d for d in docs if args.background_from <= d.first_seen.isoformat()]
    background = [d for d in background if d.first_seen <= last]
    profiles = make_profiles(docs, args.liked_month, args.liked_profiles)
    days = []
    for day in digest_days:
        pos = all_days.index(day)
        window = all_days[pos - args.window + 1 : pos + 1]
        cands = [d for w in window for d in by_day[w]]
        days.append((day, cands))
    n_cands = sum(len(c) for _, c in days)
    print(
        f"{len(days)} digest days ({', '.join(str(d) for d, _ in days)}), {n_cands} candidates "
        f"in all, {len(profiles)} profiles ({len(INTERESTS)} interests), background corpus "
        f"{len(background)} papers from {args.background_from}, liked papers from "
        f"{args.liked_month}",
        file=sys.stderr,
    )

    names = args.only or [m for m in METHODS if m not in args.skip]
    rows = []
    for name in names:
        run, fit = methods[name](background)
        t0 = time.process_time()
        w0 = time.perf_counter()
        fit()
        fit_cpu = time.process_time() - t0
        metrics: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for day, cands in days:
            now = dt.datetime.combine(day, dt.time(8), tzinfo=dt.UTC)
            ranked = run(cands, profiles, now)
            for p, picks in zip(profiles, ranked, strict=True):
                rels = [p.category in cands[i].categories for i in picks[:K]]
                n_rel = sum(p.category in c.categories for c in cands)
                metrics[p.kind].append((sum(rels) / K, ndcg(rels, n_rel)))
        cpu = time.process_time() - t0
        wall = time.perf_counter() - w0
        row = {"method": name, "cpu_s": cpu, "fit_cpu_s": fit_cpu, "wall_s": wall}
        for kind, vals in metrics.items():
            row[f"{kind}_p10"] = float(np.mean([v[0] for v in vals]))
            row[f"{kind}_ndcg10"] = float(np.mean([v[1] for v in vals]))
        rows.append(row)
        print(f"  {name}: done in {cpu:.1f} s CPU", file=sys.stderr)

    print()
    print("| method | topics P@10 | topics nDCG@10 | liked P@10 | liked nDCG@10 | CPU s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['topics_p10']:.3f} | {r['topics_ndcg10']:.3f} | "
            f"{r['liked_p10']:.3f} | {r['liked_ndcg10']:.3f} | {r['cpu_s']:.1f} "
            f"(fit {r['fit_cpu_s']:.1f}) |"
        )
    ref = {r["method"]: r for r in rows}
    if "ours" in ref and "minilm" in ref:
        print(f"\nours / minilm CPU time: {ref['ours']['cpu_s'] / ref['minilm']['cpu_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
