"""What paper embeddings cost: CPU ms per paper to encode, bytes per stored paper, memory per
100,000 stored vectors.

Encodes the title and abstract of N real arXiv papers (every k-th line of the corpus) in batches
of 32 with the product's encoder (digest/encoder.py), once per thread count, and reports CPU time
(process time, all threads) and wall time per paper: on a shared machine the CPU figure is the
one to compare. Then stores them in a fresh SQLite store the way ingestion does and reports the
bytes they take.

    python bench/encoding_cost.py [--corpus PATH] [--papers 256] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from digest.db import create_schema, make_engine
from digest.embedding_store import quantize, store_embeddings
from digest.encoder import DIMENSION, Encoder, model_files, paper_text
from digest.models import Paper

DEFAULT_CORPUS = "../shared/data/arxiv-daily/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz"


def sample(corpus: Path, n: int, every: int = 200) -> list[tuple[str, str, str]]:
    papers: list[tuple[str, str, str]] = []
    with gzip.open(corpus, "rt", encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i % every == 3:
                d = json.loads(line)
                papers.append((d["id"], d["title"], d["summary"]))
                if len(papers) == n:
                    break
    return papers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument("--papers", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    files = model_files()
    if files is None:
        raise SystemExit("the encoder's packages are not installed")
    papers = sample(args.corpus, args.papers)
    texts = [paper_text(title, abstract) for _, title, abstract in papers]
    matrix = np.zeros((0, DIMENSION), dtype=np.float32)
    print(f"{len(texts)} papers, title + abstract, batch 32, at most 256 word pieces")
    for threads in args.threads:
        encoder = Encoder(files, threads=threads, batch_size=32)
        encoder.encode(texts[:32])  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        matrix = encoder.encode(texts)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"  {threads} thread(s): {1000 * cpu / len(texts):.1f} CPU ms/paper, "
            f"{1000 * wall / len(texts):.1f} wall ms/paper"
        )
    values, scales = quantize(matrix)
    per_paper = values.nbytes / len(values) + scales.itemsize
    print(f"vector bytes per paper: {per_paper:.0f} (int8 {DIMENSION} + float32 scale)")
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/bench.db")
        create_schema(engine)
        now = dt.datetime.now(dt.UTC)
        with Session(engine) as session:
            session.add_all(
                Paper(id=i, title=t, abstract=a, first_seen=now, updated_at=now)
                for i, t, a in papers
            )
            session.commit()
            session.connection().exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            size_before = Path(folder, "bench.db").stat().st_size
            store_embeddings(
                session=session,
                model=encoder.model_key,
                paper_ids=[p[0] for p in papers],
                matrix=matrix,
            )
            session.commit()
            session.connection().exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        grown = Path(folder, "bench.db").stat().st_size - size_before
    print(f"stored bytes per paper in SQLite (row, key and index): {grown / len(papers):.0f}")
    per_100k = 100_000
    print(
        f"memory per 100k vectors: {per_100k * per_paper / 1e6:.1f} MB as stored (int8), "
        f"{per_100k * DIMENSION * 4 / 1e6:.1f} MB as a float32 matrix for scoring"
    )


if __name__ == "__main__":
    main()
