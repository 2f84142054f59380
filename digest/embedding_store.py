"""Paper embeddings kept for reuse: in the store (PaperEmbedding, one row per paper and model)
and, for `digest rank`, in an on-disk cache keyed by model and text hash.

A paper is encoded once per model: after ingestion (`embed_missing_papers`, from the embed task
or `digest papers embed`), or on demand by `paper_embeddings` when ranking meets a paper that
has none yet. Vectors are int8 with one float scale per paper (384 + 4 bytes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
from sqlalchemy import exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from digest.db import one_of
from digest.encoder import Encoder, paper_text
from digest.models import Paper, PaperEmbedding


class PaperLike(Protocol):
    """What encoding needs of a paper: a stored Paper, a RankPaper, a PaperIn."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def abstract(self) -> str: ...


class Embeddings(NamedTuple):
    """Rows aligned with the ids asked for; `found[i]` is False (and row i zero) for an id
    that has no vector for the model."""

    matrix: np.ndarray
    found: np.ndarray


def quantize(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows to int8 with one scale each (value = int8 * scale)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    peak = np.abs(matrix).max(axis=1) if len(matrix) else np.zeros(0, np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    values = np.rint(matrix / scales[:, None]).clip(-127, 127).astype(np.int8)
    return values, scales


def dequantize(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Back to float32 rows, each renormalised to unit length (what the encoder gave)."""
    rows = values.astype(np.float32) * scales[:, None]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12))


# --- the store -------------------------------------------------------------------------------


def missing_embeddings(
    *, session: Session, model: str, since: dt.datetime | None = None
) -> list[str]:
    """Ids of the papers (first seen at or after `since`) with no vector for `model`, newest
    first, so a backfill serves the candidate window before the archive."""
    stored = exists().where(
        col(PaperEmbedding.model) == model, col(PaperEmbedding.paper_id) == col(Paper.id)
    )
    query = select(col(Paper.id)).where(~stored)
    if since is not None:
        query = query.where(col(Paper.first_seen) >= since)
    query = query.order_by(col(Paper.first_seen).desc(), col(Paper.id))
    return [row[0] for row in session.execute(query)]


def store_embeddings(
    *, session: Session, model: str, paper_ids: Sequence[str], matrix: np.ndarray
) -> int:
    """Store (or replace) the vectors of `paper_ids` under `model`; the caller commits. One
    upsert: two workers storing the same paper at once (a liked paper neither had seen) both
    succeed, the later one waiting for the first to commit; before, the second failed on the
    primary key and its batch was retried. A paper id given twice is stored once (its last
    vector)."""
    if len(paper_ids) != len(matrix):
        raise ValueError(f"{len(paper_ids)} paper ids for {len(matrix)} vectors")
    if not paper_ids:
        return 0
    values, scales = quantize(matrix)
    rows = {
        paper_id: {
            "model": model,
            "paper_id": paper_id,
            "dim": values.shape[1],
            "scale": float(scale),
            "vector": row.tobytes(),
        }
        for paper_id, row, scale in zip(paper_ids, values, scales, strict=True)
    }
    table = PaperEmbedding.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    module = sqlite if dialect == "sqlite" else postgresql
    statement = module.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=["model", "paper_id"],
        set_={name: statement.excluded[name] for name in ("dim", "scale", "vector")},
    )
    for start in range(0, len(rows), 1000):
        session.execute(statement, list(rows.values())[start : start + 1000])
    return len(rows)


def load_embeddings(
    *, session: Session, model: str, paper_ids: Sequence[str], dim: int
) -> Embeddings:
    """The stored vectors of `paper_ids` under `model`, as rows in the order asked."""
    matrix = np.zeros((len(paper_ids), dim), dtype=np.float32)
    found = np.zeros(len(paper_ids), dtype=bool)
    position: dict[str, list[int]] = {}
    for i, paper_id in enumerate(paper_ids):
        position.setdefault(paper_id, []).append(i)
    unique = list(position)
    for start in range(0, len(unique), 5000):
        chunk = unique[start : start + 5000]
        rows = session.execute(
            select(
                col(PaperEmbedding.paper_id), col(PaperEmbedding.scale), col(PaperEmbedding.vector)
            ).where(
                col(PaperEmbedding.model) == model,
                col(PaperEmbedding.dim) == dim,
                one_of(session, PaperEmbedding.paper_id, chunk),
            )
        ).all()
        if not rows:
            continue
        values = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.int8).reshape(-1, dim)
        vectors = dequantize(values, np.array([r[1] for r in rows], dtype=np.float32))
        for row, vector in zip(rows, vectors, strict=True):
            matrix[position[row[0]]] = vector
            found[position[row[0]]] = True
    return Embeddings(matrix=matrix, found=found)


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_missing_papers(
    *,
    session: Session,
    encoder: Encoder,
    since: dt.datetime | None = None,
    batch_size: int = 256,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Encode the papers that have no vector for the encoder's model, committing each batch:
    an interrupted run keeps what it did, and a second run finds nothing to do."""
    model = encoder.model_key
    ids = missing_embeddings(session=session, model=model, since=since)
    if on_total is not None:
        on_total(len(ids))
    done = 0
    for chunk in _batches(ids, batch_size):
        papers = session.execute(
            select(col(Paper.id), col(Paper.title), col(Paper.abstract)).where(
                one_of(session, Paper.id, chunk)
            )
        ).all()
        matrix = encoder.encode([paper_text(p[1], p[2]) for p in papers])
        store_embeddings(
            session=session, model=model, paper_ids=[p[0] for p in papers], matrix=matrix
        )
        session.commit()
        done += len(papers)
        if progress is not None:
            progress(len(chunk))
    return done


# --- the on-disk cache for `digest rank` -----------------------------------------------------


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class EmbeddingCache:
    """Vectors by (model, hash of the encoded text) in one SQLite file: `digest rank` runs on
    files, not on the store, and a paper seen by an earlier run is not encoded again. Safe to
    share between processes (WAL, one transaction per write)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.hits = 0
        self.misses = 0
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vector (model TEXT NOT NULL, text_hash BLOB NOT NULL,"
                " scale REAL NOT NULL, value BLOB NOT NULL, PRIMARY KEY (model, text_hash))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, model: str, keys: Sequence[bytes], dim: int) -> Embeddings:
        matrix = np.zeros((len(keys), dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        position: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            position.setdefault(key, []).append(i)
        unique = list(position)
        with self._connect() as db:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, scale, value in db.execute(
                    f"SELECT text_hash, scale, value FROM vector WHERE model = ? "
                    f"AND text_hash IN ({marks})",
                    [model, *chunk],
                ):
                    row = dequantize(
                        np.frombuffer(value, dtype=np.int8).reshape(1, -1),
                        np.array([scale], dtype=np.float32),
                    )
                    if row.shape[1] == dim:
                        matrix[position[key]] = row[0]
                        found[position[key]] = True
        return Embeddings(matrix=matrix, found=found)

    def put(self, model: str, keys: Sequence[bytes], matrix: np.ndarray) -> None:
        values, scales = quantize(matrix)
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vector (model, text_hash, scale, value) VALUES (?,?,?,?)",
                [
                    (model, key, float(scale), row.tobytes())
                    for key, row, scale in zip(keys, values, scales, strict=True)
                ],
            )
        # The connection's context manager commits; sqlite3 connections are closed on collection.


def cache_for(cache_dir: Path) -> EmbeddingCache:
    return EmbeddingCache(cache_dir / "embeddings.sqlite")


# --- what the ranker calls -------------------------------------------------------------------


def paper_embeddings(
    *,
    encoder: Encoder,
    papers: Sequence[PaperLike],
    session: Session | None = None,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """Unit rows for `papers`, in order: read from the store (or the cache), and the ones
    missing encoded now and kept there for next time. With a session the new vectors are
    flushed, not committed: the caller's transaction decides."""
    if not papers:
        return np.zeros((0, encoder.dimension), dtype=np.float32)
    texts = [paper_text(p.title, p.abstract) for p in papers]
    model = encoder.model_key
    keys: list[bytes] = []
    if session is not None:
        ids = [p.id for p in papers]
        known = load_embeddings(session=session, model=model, paper_ids=ids, dim=encoder.dimension)
    elif cache is not None:
        keys = [text_key(t) for t in texts]
        known = cache.get(model, keys, encoder.dimension)
        cache.hits += int(known.found.sum())
        cache.misses += int((~known.found).sum())
    else:
        return encoder.encode(texts)
    todo = [int(i) for i in np.flatnonzero(~known.found)]
    if len(todo):
        fresh = encoder.encode([texts[i] for i in todo])
        # Exactly what a later read of the stored int8 form gives: a first and a second run
        # rank alike.
        known.matrix[todo] = dequantize(*quantize(fresh))
        if session is not None:
            # A paper id given twice is stored once.
            first = {papers[i].id: n for n, i in enumerate(todo)}
            rows = list(first.values())
            store_embeddings(
                session=session, model=model, paper_ids=list(first), matrix=fresh[rows]
            )
        elif cache is not None:
            cache.put(model, [keys[i] for i in todo], fresh)
    return known.matrix
