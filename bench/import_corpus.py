"""Benchmark: importing a JSON Lines paper corpus, upsert_papers on parsed batches (the baseline)
against the streamed import `digest papers import` uses, each into a fresh store, twice (new papers,
then all known). Both now write through paperstore's one bulk path (the ORM upsert is gone).

    .venv/bin/python bench/import_corpus.py PATH/arxiv-daily-2025-03-18_2026-07-01.jsonl.gz \
        [--limit N] [--postgres postgresql://postgres@127.0.0.1:5432/test]

Both paths parse the same lines with the same code; the ratio is the store's share. Wall time
and this process's CPU time are printed (the machine may be shared: CPU time is the steadier
figure; PostgreSQL's own work shows only in wall time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import itertools
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import SQLModel

from digest import paperstore
from digest.db import create_schema, make_engine, session_scope
from digest.papers import PaperIn, read_papers

NOW = dt.datetime(2026, 7, 2, tzinfo=dt.UTC)


def batch_upsert(session, lines, now) -> tuple[int, int, int]:
    """paperstore.upsert_papers on batches of 2000 parsed papers."""
    new = updated = unchanged = 0
    papers = (p for p in read_papers(lines) if isinstance(p, PaperIn))
    while batch := list(itertools.islice(papers, 2000)):
        result = paperstore.upsert_papers(session=session, papers=batch, now=now)
        new, updated, unchanged = (
            new + result.new,
            updated + result.updated,
            unchanged + result.unchanged,
        )
    return new, updated, unchanged


def bulk_import(session, lines, now) -> tuple[int, int, int]:
    report = paperstore.import_papers(session=session, lines=lines, now=now)
    return report.new, report.updated, report.unchanged


@contextmanager
def fresh_store(kind: str, postgres: str | None) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    assert postgres
    import psycopg

    name = f"digest_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(
    url: str, lines: list[str], method: Callable
) -> list[tuple[float, float, tuple[int, int, int]]]:
    engine = make_engine(url)
    SQLModel.metadata.drop_all(engine)
    create_schema(engine)
    results = []
    try:
        for _ in range(2):
            with session_scope(engine) as session:
                start, cpu = time.perf_counter(), time.process_time()
                counts = method(session, lines, NOW)
                wall = time.perf_counter() - start
                results.append((wall, time.process_time() - cpu, counts))
    finally:
        engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--postgres", default=None, help="admin URL; also run on PostgreSQL")
    args = parser.parse_args()
    opener = gzip.open if args.corpus.suffix == ".gz" else open
    with opener(args.corpus, "rt", encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, args.limit))
    print(f"{len(lines)} lines from {args.corpus.name}")
    for kind in ["sqlite"] + (["postgresql"] if args.postgres else []):
        runs = {}
        for name, method in (("upsert batches (baseline)", batch_upsert), ("bulk", bulk_import)):
            with fresh_store(kind, args.postgres) as url:
                runs[name] = timed(url, lines, method)
        base = runs["upsert batches (baseline)"]
        for name, results in runs.items():
            for (wall, cpu, counts), (base_wall, base_cpu, _), label in zip(
                results, base, ("first import", "second import"), strict=True
            ):
                print(
                    f"{kind:10s} {name:22s} {label:13s} wall {wall:6.2f} s "
                    f"(x{base_wall / wall:4.2f})  cpu {cpu:6.2f} s (x{base_cpu / cpu:4.2f})  "
                    f"new/updated/unchanged {counts}"
                )


if __name__ == "__main__":
    main()
