"""Relevance benchmark: our ranker against the methods of today's digest tools, on real arXiv days.

Protocol (issue 13, item 6). The cases are in `bench/interests.json`, committed before any method
was run on them: 69 interests over 23 arXiv categories, typed as people type them (short, vague,
multi-topic, jargon), and the months split. A paper is relevant to an interest when it lists the
interest's category. A digest day's candidates are the papers first announced on that day or the
two announcement days before it; eight digest days are spread over each month.

- `--split tune` runs the tuning months (2026-03, 2026-04): choose settings there only.
- `--split report` runs the held-out months (2026-05, 2026-06): run it once, at the end.
- `--split fresh` (2025-07, 2025-08) was added on 2026-12-04, before any method ran on it, once
  the report months had been seen with the ranker of that time: settings chosen on tune after
  that are reported here. Its liked papers (2025-12..2026-02) come from after its days.
- `--split holdout` (2025-05, 2025-06) was added on 2026-12-05, before any method ran on it, once
  the fresh months had been seen too: the recency weight chosen on tune that day is reported here.

Two kinds of profile, scored apart:

- topic profiles: one per interest, its free-text topics only;
- liked-paper profiles: 1, 3, 5 or 10 papers of a category, drawn from months used by neither
  split (2025-12 to 2026-02), no topics; three draws per category and count.

A (profile, day) pair with no relevant candidate is left out. A profile's score is its mean over
the days; a method's score is the mean over profiles, with a bootstrap 95 % interval (profiles
resampled with replacement, fixed seed). A difference between two methods is bootstrapped paired
(the same resampled profiles for both): a gain counts only if its interval excludes 0.

Methods (the table `METHODS`; a new one plugs in with `@method("name")`):

- bm25: Okapi BM25 (k1 1.5, b 0.75, rank-bm25's BM25Okapi, as sparse matrices) over the day's
  candidates; the query is the topics, or the liked papers' text.
- tfidf: TF-IDF cosine to the topics, or to the centroid of the liked papers.
- svm: arxiv-sanity-lite, a linear SVM per profile on its TF-IDF features with the liked papers
  (or the topic text) as positives and the day's candidates as negatives (C=0.01, balanced).
- minilm: zotero-arxiv-daily, all-MiniLM-L6-v2 embeddings (bench/encoder.py, int8 ONNX, cached
  on disk in .cache/), candidates ranked by cosine to the mean of the liked papers or topics.
- ours: the product default, as delivery ranks: the day's candidates prepared once
  (`prepare_corpus`) with their embeddings, hybrid relevance (embeddings + BM25, the gate), the
  per-profile preference model for liked papers; then `rank_prepared`.
- ours-rel: the same, relevance only: recency and trending weights 0, no threshold, no gate or
  floor of either tier.
- ours-tfidf: the fallback without an encoder (TF-IDF and its latent space; not run by default).

The candidates' embeddings are read from the cache under the bench's text ("title. abstract");
the product encodes title and abstract on two lines: one period apart (not measured here).

The background corpus every method may fit on is the papers first announced from 60 days before
the split's first month to its last digest day (no labels are used). Precision@10 counts a missing
pick as not relevant. CPU is process time spent in the method, fitting included; the encoder's
one-off load is reported apart, and so is how many texts were encoded in this run (0 when the
cache already had them).

    pip install -e '.[bench]'        # rank-bm25; the encoder is in the default install
    python bench/relevance.py --split tune [--only bm25 --only ours] [--set weight_recency=0]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import json
import math
import random
import re
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.ranking import Profile, RankingConfig, RankPaper, prepare_corpus, rank_prepared  # noqa: E402

DEFAULT_CORPUS = "../shared/data/arxiv-daily/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz"
DEFAULT_CASES = Path(__file__).resolve().parent / "interests.json"
CATEGORY = re.compile(r"^[a-z-]+(\.[A-Za-z-]+)?$")
K = 10
BACKGROUND_DAYS = 60


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
class Interest:
    category: str
    kind: str  # how it is phrased: short, vague, multi, jargon
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Cases:
    interests: tuple[Interest, ...]
    months: dict[str, list[str]]  # tune, report, fresh, liked
    protocol: dict[str, Any]


@dataclass(frozen=True)
class BenchProfile:
    id: str
    kind: str  # "topics" or "liked"
    category: str
    topics: tuple[str, ...]
    liked: tuple[Doc, ...]
    group: str  # the phrasing kind of a topic profile, or "liked1", "liked3", ...


def load_cases(path: Path) -> Cases:
    raw = json.loads(path.read_text())
    interests = tuple(
        Interest(i["category"], i["kind"], tuple(i["topics"])) for i in raw["interests"]
    )
    return Cases(interests, raw["months"], raw["protocol"])


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


def make_profiles(cases: Cases, docs: Sequence[Doc]) -> list[BenchProfile]:
    profiles = [
        BenchProfile(f"{i.category}/{n}", "topics", i.category, i.topics, (), i.kind)
        for n, i in enumerate(cases.interests)
    ]
    rng = random.Random(cases.protocol["seed"])
    liked_months = tuple(cases.months["liked"])
    for category in sorted({i.category for i in cases.interests}):
        pool = [
            d
            for d in docs
            if d.first_seen.isoformat()[:7] in liked_months and category in d.categories
        ]
        for count in cases.protocol["liked_counts"]:
            for n in range(cases.protocol["liked_profiles_per_category_and_count"]):
                liked = tuple(rng.sample(pool, count))
                profiles.append(
                    BenchProfile(
                        f"{category}/liked{count}-{n}",
                        "liked",
                        category,
                        (),
                        liked,
                        f"liked{count}",
                    )
                )
    return profiles


def digest_days(
    by_day: dict[dt.date, list[Doc]], months: Sequence[str], per_month: int, window: int
) -> list[tuple[dt.date, list[Doc]]]:
    """`per_month` announcement days spread over each month, each with its window's papers."""
    all_days = sorted(by_day)
    out = []
    for month in months:
        days = [d for d in all_days if d.isoformat().startswith(month)]
        step = max(1, len(days) // per_month)
        for day in days[step - 1 :: step][:per_month]:
            pos = all_days.index(day)
            out.append((day, [d for w in all_days[pos - window + 1 : pos + 1] for d in by_day[w]]))
    return out


def ndcg(rels: Sequence[bool], n_relevant: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(rels[:K]) if r)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(K, n_relevant)))
    return dcg / ideal if ideal else 0.0


def top_k(scores: np.ndarray) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return order[:K].tolist()


# --- methods ---------------------------------------------------------------------------------


@dataclass
class Context:
    """What a method may use: the unlabelled background corpus, the encoder, our settings."""

    background: Sequence[Doc]
    ranking: RankingConfig = field(default_factory=RankingConfig)
    encoder: Any = None  # bench.encoder.CachedEncoder, loaded before timing when needed


# A method's run gets (candidates, profiles, now) and returns per profile the candidate indices,
# best first; its fit (timed too) prepares what does not depend on the day.
Run = Callable[[Sequence[Doc], Sequence[BenchProfile], dt.datetime], list[list[int]]]
Fit = Callable[[], None]


@dataclass(frozen=True)
class MethodSpec:
    build: Callable[[Context], tuple[Run, Fit]]
    ours: bool = False  # compared against every baseline in the difference table
    encoder: bool = False  # needs the sentence encoder
    default: bool = True  # run unless --only names it


METHODS: dict[str, MethodSpec] = {}


def method(name: str, *, ours: bool = False, encoder: bool = False, default: bool = True):
    def register(build: Callable[[Context], tuple[Run, Fit]]):
        METHODS[name] = MethodSpec(build, ours=ours, encoder=encoder, default=default)
        return build

    return register


STOP_TOKEN = re.compile(r"[a-z0-9]+")


def bm25_tokens(text: str) -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [t for t in STOP_TOKEN.findall(text.lower()) if t not in ENGLISH_STOP_WORDS]


class BM25:
    """Okapi BM25 exactly as rank-bm25's BM25Okapi scores (k1, b, and its floor for the idf of
    terms in more than half the documents), as one sparse matrix so a long query (ten liked
    abstracts) costs one product instead of a Python loop per query word."""

    def __init__(
        self, corpus: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75, epsilon=0.25
    ):
        from scipy import sparse

        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, doc in enumerate(corpus):
            for t in doc:
                rows.append(i)
                cols.append(vocab.setdefault(t, len(vocab)))
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(corpus), len(vocab)))
        tf.sum_duplicates()
        n = len(corpus)
        lengths = np.array([len(d) for d in corpus], dtype=np.float64)
        df = np.bincount(tf.indices, minlength=len(vocab))
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = epsilon * idf.mean()
        norm = k1 * (1 - b + b * lengths / lengths.mean())
        weights = tf.tocoo()
        f = weights.data
        weights.data = idf[weights.col] * f * (k1 + 1) / (f + norm[weights.row])
        self.weights = weights.tocsr()
        self.vocab = vocab

    def scores(self, query: Sequence[str]) -> np.ndarray:
        q = np.zeros(len(self.vocab))
        for t in query:
            j = self.vocab.get(t)
            if j is not None:
                q[j] += 1  # a repeated query word counts again, as in rank-bm25
        return self.weights @ q


@method("bm25")
def method_bm25(ctx: Context) -> tuple[Run, Fit]:
    def run(cands, profiles, now):
        bm25 = BM25([bm25_tokens(d.text) for d in cands])
        out = []
        for p in profiles:
            query = " ".join(p.topics) if p.kind == "topics" else " ".join(d.text for d in p.liked)
            out.append(top_k(bm25.scores(bm25_tokens(query))))
        return out

    return run, lambda: None


@method("tfidf")
def method_tfidf(ctx: Context) -> tuple[Run, Fit]:
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    state: dict[str, TfidfVectorizer] = {}

    def fit() -> None:
        vec = TfidfVectorizer(stop_words="english", sublinear_tf=True, dtype=np.float32)
        vec.fit([d.text for d in ctx.background])
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


@method("svm")
def method_svm(ctx: Context) -> tuple[Run, Fit]:
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
        vec.fit([d.text for d in ctx.background])
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


@method("minilm", encoder=True)
def method_minilm(ctx: Context) -> tuple[Run, Fit]:
    def run(cands, profiles, now):
        x = ctx.encoder.encode([d.text for d in cands])
        out = []
        for p in profiles:
            texts = list(p.topics) if p.kind == "topics" else [d.text for d in p.liked]
            # zotero-arxiv-daily: cosine to the mean of the library (or of the topics).
            out.append(top_k(x @ ctx.encoder.encode(texts).mean(axis=0)))
        return out

    return run, lambda: None


def to_rank(doc: Doc) -> RankPaper:
    # Announcement morning; categories are left out: they are the benchmark's labels.
    when = dt.datetime.combine(doc.first_seen, dt.time(0), tzinfo=dt.UTC)
    return RankPaper(id=doc.id, title=doc.title, abstract=doc.abstract, first_seen=when)


def ranker(ctx: Context, config: RankingConfig, *, with_encoder: bool = False) -> tuple[Run, Fit]:
    """Our ranker as the delivery pipeline calls it: the day's candidates prepared once (with
    their sentence embeddings when there is an encoder: hybrid relevance, the product default),
    then every profile ranked against them."""

    def fit() -> None:
        pass

    def run(cands, profiles, now):
        papers = [to_rank(d) for d in cands]
        index = {p.id: i for i, p in enumerate(papers)}
        config_k = dataclasses.replace(config, top_k=K)
        corpus = prepare_corpus(
            papers,
            now=now,
            config=config_k,
            encoder=ctx.encoder if with_encoder else None,
            embeddings=ctx.encoder.encode([d.text for d in cands]) if with_encoder else None,
        )
        ranked = rank_prepared(
            corpus,
            [
                Profile(id=p.id, topics=p.topics, liked=tuple(to_rank(d) for d in p.liked))
                for p in profiles
            ],
        )
        return [[index[pick.paper_id] for pick in picks] for picks in ranked]

    return run, fit


def relevance_only(config: RankingConfig) -> RankingConfig:
    return dataclasses.replace(
        config,
        weight_recency=0.0,
        weight_trending=0.0,
        min_relevance=0.0,
        hybrid_min_relevance=0.0,
        gate_min=-1.0,
        topic_min_relevance=-1.0,
    )


@method("ours", ours=True, encoder=True)
def method_ours(ctx: Context) -> tuple[Run, Fit]:
    """The product default: hybrid relevance (embeddings + BM25) over the encoder."""
    return ranker(ctx, ctx.ranking, with_encoder=True)


@method("ours-rel", ours=True, encoder=True)
def method_ours_rel(ctx: Context) -> tuple[Run, Fit]:
    return ranker(ctx, relevance_only(ctx.ranking), with_encoder=True)


@method("ours-tfidf", ours=True, default=False)
def method_ours_tfidf(ctx: Context) -> tuple[Run, Fit]:
    """The fallback without an encoder (DIGEST_ENCODER=tfidf): TF-IDF and its latent space."""
    return ranker(ctx, ctx.ranking)


# --- scoring ---------------------------------------------------------------------------------


def score_method(
    run: Run,
    days: Sequence[tuple[dt.date, list[Doc]]],
    profiles: Sequence[BenchProfile],
) -> dict[str, np.ndarray]:
    """Per profile, the mean P@10 and nDCG@10 over its days (NaN: no day had a relevant paper)."""
    sums = np.zeros((len(profiles), 2))
    counts = np.zeros(len(profiles))
    for day, cands in days:
        now = dt.datetime.combine(day, dt.time(8), tzinfo=dt.UTC)
        ranked = run(cands, profiles, now)
        for j, (p, picks) in enumerate(zip(profiles, ranked, strict=True)):
            n_rel = sum(p.category in c.categories for c in cands)
            if not n_rel:
                continue
            rels = [p.category in cands[i].categories for i in picks[:K]]
            sums[j] += (sum(rels) / K, ndcg(rels, n_rel))
            counts[j] += 1
    with np.errstate(invalid="ignore"):
        means = sums / counts[:, None]
    return {"p10": means[:, 0], "ndcg10": means[:, 1]}


def score_quiet(
    run: Run,
    days: Sequence[tuple[dt.date, list[Doc]]],
    profiles: Sequence[BenchProfile],
) -> dict[str, np.ndarray]:
    """Days with nothing for a profile, made from the real ones: each digest day's candidates
    without the papers of the profile's category (what arrives on a day when nobody in the field
    posted). Per profile, over the days: the mean number of papers sent (each one is noise by
    the benchmark's labels) and the share of days that send no email. P@10 cannot see this:
    the days it scores always hold a relevant paper."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for j, p in enumerate(profiles):
        by_category[p.category].append(j)
    sent = np.zeros(len(profiles))
    empty = np.zeros(len(profiles))
    for day, cands in days:
        now = dt.datetime.combine(day, dt.time(8), tzinfo=dt.UTC)
        for category, members in by_category.items():
            quiet = [c for c in cands if category not in c.categories]
            ranked = run(quiet, [profiles[j] for j in members], now)
            for j, picks in zip(members, ranked, strict=True):
                sent[j] += len(picks[:K])
                empty[j] += not picks
    return {"quiet_sent": sent / len(days), "quiet_empty": empty / len(days)}


def bootstrap(values: np.ndarray, resamples: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % percentile interval; `resamples` is (B x n) indices into values."""
    means = values[resamples].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def groups_of(profiles: Sequence[BenchProfile]) -> dict[str, np.ndarray]:
    """Profile index sets that are reported: topics overall and per phrasing kind (in the JSON
    only), liked overall and per count."""
    out: dict[str, list[int]] = defaultdict(list)
    for j, p in enumerate(profiles):
        out[p.kind].append(j)
        out[p.group if p.kind == "liked" else f"topics-{p.group}"].append(j)
    return {g: np.array(v) for g, v in out.items()}


def summarise(
    results: dict[str, dict[str, Any]],
    profiles: Sequence[BenchProfile],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    groups = groups_of(profiles)
    # Profiles with a relevant candidate on at least one day (the same for every method).
    first = next(iter(results.values()))["per_profile"]["p10"]
    kept = {g: idx[~np.isnan(first[idx])] for g, idx in groups.items()}
    # One generator per group, seeded by its name: adding a group moves no other's interval.
    draws = {
        g: np.random.default_rng([seed, zlib.crc32(g.encode())]).integers(
            0, len(idx), size=(n_resamples, len(idx))
        )
        for g, idx in kept.items()
    }
    table: dict[str, Any] = {}
    for name, res in results.items():
        row = {}
        for g, idx in kept.items():
            for metric in res["per_profile"]:
                row[f"{g}_{metric}"] = bootstrap(res["per_profile"][metric][idx], draws[g])
        table[name] = row
    diffs: dict[str, Any] = {}
    ours = [n for n in results if METHODS[n].ours]
    for a in ours:
        for b in results:
            if b == a or (METHODS[b].ours and ours.index(b) < ours.index(a)):
                continue
            row = {}
            for g, idx in kept.items():
                for metric in results[a]["per_profile"].keys() & results[b]["per_profile"]:
                    d = (
                        results[a]["per_profile"][metric][idx]
                        - results[b]["per_profile"][metric][idx]
                    )
                    row[f"{g}_{metric}"] = bootstrap(d, draws[g])
            diffs[f"{a} - {b}"] = row
    return {"table": table, "diffs": diffs, "profiles": {g: len(v) for g, v in kept.items()}}


def ci(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def markdown(summary: dict[str, Any], results: dict[str, dict[str, Any]], title: str) -> str:
    counts = sorted(
        (g for g in summary["profiles"] if g.startswith("liked") and g != "liked"),
        key=lambda g: int(g[5:]),
    )
    head = ["method", "topics P@10", "topics nDCG@10", "liked P@10", "liked nDCG@10"]
    head += [f"liked{g[5:]} P@10" for g in counts] + ["CPU s"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["table"].items():
        r = results[name]
        cpu = f"{r['cpu_s']:.1f} (fit {r['fit_cpu_s']:.1f}"
        cpu += f", encoded {r['encoded']})" if METHODS[name].encoder else ")"
        cells = [name, ci(row["topics_p10"]), ci(row["topics_ndcg10"])]
        cells += [ci(row["liked_p10"]), ci(row["liked_ndcg10"])]
        cells += [ci(row[f"{g}_p10"]) for g in counts] + [cpu]
        lines.append("| " + " | ".join(cells) + " |")
    if all("topics_quiet_sent" in row for row in summary["table"].values()):
        lines += [
            "",
            "Quiet days (each digest day again without the profile's category, so nothing is "
            f"relevant): papers sent of {K}, and the share of days with no email:",
            "",
            "| method | topics: sent | topics: no email | liked: sent | liked: no email |",
            "|---|---|---|---|---|",
        ]
        for name, row in summary["table"].items():
            cells = [name] + [
                ci(row[f"{kind}_quiet_{m}"])
                for kind in ("topics", "liked")
                for m in ("sent", "empty")
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if summary["diffs"]:
        head = ["difference", "topics P@10", "topics nDCG@10", "liked P@10", "liked nDCG@10"]
        head += [f"liked{g[5:]} P@10" for g in counts]
        lines += ["", "Paired differences, 95 % interval; * where it excludes 0:", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in summary["diffs"].items():
            keys = ["topics_p10", "topics_ndcg10", "liked_p10", "liked_ndcg10"]
            keys += [f"{g}_p10" for g in counts]
            cells = [name] + [
                f"{ci(row[k])}{' *' if row[k][1] > 0 or row[k][2] < 0 else ''}" for k in keys
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def parse_settings(parser: argparse.ArgumentParser, items: Sequence[str]) -> RankingConfig:
    ranking = RankingConfig()
    fields = [f.name for f in dataclasses.fields(RankingConfig)]
    for item in items:
        name, _, value = item.partition("=")
        usage = f"--set {item}: expected FIELD=NUMBER, FIELD one of {', '.join(fields)}"
        if name not in fields:
            parser.error(usage)
        try:
            ranking = dataclasses.replace(ranking, **{name: type(getattr(ranking, name))(value)})
        except ValueError:
            parser.error(usage)
    return ranking


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument(
        "--split",
        choices=("tune", "report", "fresh", "holdout"),
        default="tune",
        help="tune: the months for choosing settings; report, fresh, holdout: held-out months, "
        "each run once with the settings of its time",
    )
    parser.add_argument(
        "--days",
        type=int,
        help="digest days per month (default: the cases' 8); fewer is a sample: say so with "
        "the figures",
    )
    parser.add_argument("--only", action="append", default=[], choices=sorted(METHODS))
    parser.add_argument("--skip", action="append", default=[], choices=sorted(METHODS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one of our RankingConfig settings (e.g. weight_recency=0) for our methods; "
        "the reported table uses the defaults",
    )
    parser.add_argument(
        "--no-quiet",
        action="store_true",
        help="skip the quiet days (each day again without the profile's category: how much is "
        "sent when nothing is relevant); about as long as the scored days",
    )
    parser.add_argument("--json", type=Path, help="default bench/results/relevance-SPLIT.json")
    args = parser.parse_args(argv)
    ranking = parse_settings(parser, args.set)
    if args.set:
        print(f"our settings changed: {', '.join(args.set)}", file=sys.stderr)

    cases = load_cases(args.cases)
    proto = cases.protocol
    print(f"Reading {args.corpus} ...", file=sys.stderr)
    docs = load_corpus(args.corpus)
    by_day: dict[dt.date, list[Doc]] = defaultdict(list)
    for d in docs:
        by_day[d.first_seen].append(d)
    months = cases.months[args.split]
    per_month = args.days or proto["digest_days_per_month"]
    days = digest_days(by_day, months, per_month, proto["window_days"])
    start = dt.date.fromisoformat(months[0] + "-01") - dt.timedelta(days=BACKGROUND_DAYS)
    background = [d for d in docs if start <= d.first_seen <= days[-1][0]]
    profiles = make_profiles(cases, docs)
    print(
        f"split {args.split} ({', '.join(months)}): {len(days)} digest days "
        f"({', '.join(str(d) for d, _ in days)}), {sum(len(c) for _, c in days)} candidates in "
        f"all, {len(profiles)} profiles ({len(cases.interests)} interests), background "
        f"{len(background)} papers from {start}, liked papers from "
        f"{', '.join(cases.months['liked'])}",
        file=sys.stderr,
    )

    names = args.only or [n for n, m in METHODS.items() if m.default and n not in args.skip]
    ctx = Context(background=background, ranking=ranking)
    encoder_load_s = None
    if any(METHODS[n].encoder for n in names):
        from bench.encoder import load_encoder

        t0 = time.process_time()
        ctx.encoder = load_encoder()
        encoder_load_s = time.process_time() - t0
        print(f"  encoder {ctx.encoder.name} loaded in {encoder_load_s:.1f} s CPU", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        run, fit = METHODS[name].build(ctx)
        encoded0 = ctx.encoder.encoded if ctx.encoder else 0
        t0 = time.process_time()
        w0 = time.perf_counter()
        fit()
        fit_cpu = time.process_time() - t0
        per_profile = score_method(run, days, profiles)
        if not args.no_quiet:
            per_profile |= score_quiet(run, days, profiles)
        results[name] = {
            "per_profile": per_profile,
            "cpu_s": time.process_time() - t0,
            "fit_cpu_s": fit_cpu,
            "wall_s": time.perf_counter() - w0,
            "encoded": (ctx.encoder.encoded if ctx.encoder else 0) - encoded0,
        }
        print(f"  {name}: {results[name]['cpu_s']:.1f} s CPU", file=sys.stderr)

    summary = summarise(results, profiles, proto["bootstrap_resamples"], proto["seed"])
    title = (
        f"Split {args.split} ({', '.join(months)}), {len(days)} digest days, "
        f"{summary['profiles']['topics']} topic profiles, {summary['profiles']['liked']} liked "
        f"profiles" + (f", settings {', '.join(args.set)}" if args.set else "")
    )
    print(markdown(summary, results, title))
    out = args.json or Path(__file__).resolve().parent / "results" / f"relevance-{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    dump = {
        "split": args.split,
        "months": months,
        "digest_days": [str(d) for d, _ in days],
        "settings": args.set,
        "encoder_load_cpu_s": encoder_load_s,
        "profiles": [dataclasses.asdict(p) | {"liked": [d.id for d in p.liked]} for p in profiles],
        "summary": summary,
        "methods": {
            n: {k: v for k, v in r.items() if k != "per_profile"}
            | {m: [None if math.isnan(x) else x for x in v] for m, v in r["per_profile"].items()}
            for n, r in results.items()
        },
    }
    out.write_text(json.dumps(dump, indent=1, default=str))
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
