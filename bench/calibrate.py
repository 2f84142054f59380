"""Calibrate hybrid relevance's thresholds on the tuning months (never the reported ones).

For every (interest topic, candidate) pair of the tuning split's digest days: the fused
relevance and the dense cosine, split by whether the candidate is relevant (lists the
interest's category). The minimum relevance is set from the unrelated pairs' distribution (a
high percentile: an unrelated paper almost never passes), and "matches" from the relevant
pairs' (a paper said to match is closer than most papers of the field).

    python bench/calibrate.py --split tune [--days 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.encoder import load_encoder  # noqa: E402
from bench.relevance import DEFAULT_CASES, DEFAULT_CORPUS, digest_days, load_cases, load_corpus  # noqa: E402
from digest.ranking import RankingConfig  # noqa: E402
from digest.ranking.hybrid import Bm25, fuse  # noqa: E402

PERCENTILES = (50, 90, 95, 97, 98, 99, 99.5, 99.7, 99.8, 99.9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument("--split", default="tune", choices=["tune"])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument(
        "--dense-weight",
        type=float,
        default=RankingConfig().gate_dense_weight,
        help="the fusion whose distribution is read (default: the gate's)",
    )
    args = parser.parse_args()
    cases = load_cases(DEFAULT_CASES)
    docs = load_corpus(args.corpus)
    by_day: dict[dt.date, list] = defaultdict(list)
    for d in docs:
        by_day[d.first_seen].append(d)
    months = cases.months[args.split]
    days = digest_days(by_day, months, args.days, cases.protocol["window_days"])
    encoder = load_encoder()
    fused_rel, fused_other, dense_rel, dense_other = [], [], [], []
    topics = sorted({t for case in cases.interests for t in case.topics})
    queries = dict(zip(topics, encoder.encode(topics), strict=True))
    for _day, cands in days:
        e = encoder.encode([d.text for d in cands])
        bm25 = Bm25([f"{d.title}. {d.title}. {d.abstract}" for d in cands])
        for case in cases.interests:
            relevant = np.array([case.category in d.categories for d in cands])
            for topic in case.topics:
                dense = e @ queries[topic]
                fused = fuse(dense, bm25.scores([topic])[0], args.dense_weight)
                fused_rel.append(fused[relevant])
                fused_other.append(fused[~relevant])
                dense_rel.append(dense[relevant])
                dense_other.append(dense[~relevant])
    for name, values in (
        ("fused, unrelated pairs", fused_other),
        ("fused, relevant pairs", fused_rel),
        ("dense, unrelated pairs", dense_other),
        ("dense, relevant pairs", dense_rel),
    ):
        v = np.concatenate(values)
        q = np.percentile(v, PERCENTILES)
        cells = ", ".join(f"p{p:g} {x:.3f}" for p, x in zip(PERCENTILES, q, strict=True))
        print(f"{name}: n={len(v)} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
