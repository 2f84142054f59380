"""What paper embeddings cost: CPU ms per paper to encode, bytes per stored paper, memory per
100,000 stored vectors.

Encodes the title and abstract of N real arXiv papers (every k-th line of the corpus) with the
product's encoder (digest/encoder.py, its default batch size), once per thread count, and reports
CPU time (process time, all threads) and wall time per paper: on a shared machine the CPU figure
is the one to compare. Then, one thread, each batch size of `--batch-sizes` in a process of its
own: CPU per paper and the process's peak resident memory, against batches of 32 texts whatever
their length (the encoder before 2026-12-05) in the same run; the default now also holds a batch
to 1,024 word pieces. Then stores the vectors in a fresh SQLite store the way ingestion
does and reports the bytes they take.

    python bench/encoding_cost.py [--corpus PATH] [--papers 256] [--threads 1 2]
        [--batch-sizes 8 4 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from digest.db import create_schema, make_engine
from digest.embedding_store import quantize, store_embeddings
from digest.encoder import DIMENSION, MAX_BATCH_WORD_PIECES, Encoder, model_files, paper_text
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


def _batch_cost(
    texts: list[str],
    batch: int,
    pieces: int,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """In a process of its own: CPU seconds to encode `texts` in batches of at most `batch`
    texts and `pieces` word pieces, and the process's peak resident memory (MB) after it."""
    files = model_files()
    assert files is not None
    encoder = Encoder(files, threads=1, batch_size=batch, max_batch_pieces=pieces)
    encoder.encode(texts[:8])  # warm up
    cpu = time.process_time()
    encoder.encode(texts)
    cpu = time.process_time() - cpu
    # VmHWM, not ru_maxrss: Linux carries a parent's peak into its children's ru_maxrss.
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    out.put((cpu, peak_kb / 1024))


def batch_sizes(texts: list[str], sizes: list[int]) -> None:
    unbounded = 10**9
    runs = {
        "32 texts, any length (before)": (32, unbounded),
        f"default: 32 texts, {MAX_BATCH_WORD_PIECES} word pieces": (32, MAX_BATCH_WORD_PIECES),
        **{f"{n} texts, any length": (n, unbounded) for n in sizes},
    }
    results: dict[str, tuple[float, float]] = {}
    context = multiprocessing.get_context("spawn")
    for name, (batch, pieces) in runs.items():
        queue = context.Queue()
        child = context.Process(target=_batch_cost, args=(texts, batch, pieces, queue))
        child.start()
        results[name] = queue.get()
        child.join()
    base_cpu, base_rss = next(iter(results.values()))
    print(f"batches, one thread, {len(texts)} papers, a process each (against the first):")
    for name, (cpu, rss) in results.items():
        print(
            f"  {name:<38} {1000 * cpu / len(texts):.1f} CPU ms/paper "
            f"({cpu / base_cpu:.2f}x), peak RSS {rss:.0f} MB ({rss / base_rss:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(DEFAULT_CORPUS))
    parser.add_argument("--papers", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 4, 1])
    args = parser.parse_args()
    files = model_files()
    if files is None:
        raise SystemExit("the encoder's packages are not installed")
    papers = sample(args.corpus, args.papers)
    texts = [paper_text(title, abstract) for _, title, abstract in papers]
    matrix = np.zeros((0, DIMENSION), dtype=np.float32)
    print(f"{len(texts)} papers, title + abstract, default batch, at most 256 word pieces")
    for threads in args.threads:
        encoder = Encoder(files, threads=threads)
        encoder.encode(texts[:32])  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        matrix = encoder.encode(texts)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"  {threads} thread(s): {1000 * cpu / len(texts):.1f} CPU ms/paper, "
            f"{1000 * wall / len(texts):.1f} wall ms/paper"
        )
    if args.batch_sizes:
        batch_sizes(texts, args.batch_sizes)
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
