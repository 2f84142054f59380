"""The day's prepared candidate corpus, fitted once and reused: across a worker's batches for
a few minutes, and across the worker processes of a host through memory-mapped files."""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import gc
import hashlib
import mmap
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session

from digest import ranking
from digest.config import Settings
from digest.digests import digest_as_of, prepare_candidates, ranking_config
from digest.models import Paper
from digest.paperstore import candidate_papers, papers_changed_at
from digest.ranking import PreparedCorpus


def release_freed_memory() -> None:
    """Give the heap freed after fitting (a vocabulary of every bigram, SVD work arrays) back
    to the operating system, so a long-lived worker does not keep its peak for the day."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# Part of a cached corpus's file name: a new PreparedCorpus layout, or new ranking code, never
# loads a corpus prepared by another.
def _ranking_code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(ranking.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


CORPUS_FORMAT = (2, _ranking_code_hash())


class CorpusCache:
    """Prepared candidate corpora by digest date, reused across batches for `max_age` seconds,
    as long as no paper was stored or changed since (a digest looked at again because papers
    came must be ranked with them).

    With a `directory`, a prepared corpus is also shared between the worker processes of a
    host: the first to need it fits the model (seconds, and the memory peak of the day) under a
    file lock and writes it; the others wait for the lock and load it.
    """

    def __init__(
        self,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        directory: Path | None = None,
    ):
        self.max_age = max_age
        self.clock = clock
        self.directory = directory
        self._entries: dict[
            dt.date, tuple[float, dt.datetime | None, PreparedCorpus, dict[str, Paper]]
        ] = {}

    def get(
        self, *, session: Session, settings: Settings, digest_date: dt.date, now: dt.datetime
    ) -> tuple[PreparedCorpus, dict[str, Paper]]:
        entry = self._entries.get(digest_date)
        changed_at = papers_changed_at(session=session)
        if entry is not None and self.clock() - entry[0] < self.max_age and entry[1] == changed_at:
            return entry[2], entry[3]
        # What the last corpus left out of garbage collection is collectable again.
        gc.unfreeze()
        self._entries = {}
        as_of = digest_as_of(digest_date, now)
        papers = candidate_papers(session=session, as_of=as_of, days=settings.candidate_days)
        for paper in papers:
            session.expunge(paper)  # kept across sessions; never expired or flushed
        corpus = self._prepare(session, papers, as_of, settings)
        by_id = {p.id: p for p in papers}
        release_freed_memory()
        # Keep one date's corpus.
        self._entries = {digest_date: (self.clock(), changed_at, corpus, by_id)}
        # The corpus (thousands of papers, their reasons, the query memo) lives as long as this
        # entry: left out of the collector's passes, which otherwise walked it again and again,
        # a tenth of a worker's time. Unfrozen when the entry is replaced.
        gc.collect()
        gc.freeze()
        return corpus, by_id

    def _prepare(
        self, session: Session, papers: list[Paper], as_of: dt.datetime, settings: Settings
    ) -> PreparedCorpus:
        config = ranking_config(settings)

        def prepare() -> PreparedCorpus:
            return prepare_candidates(
                session=session, settings=settings, papers=papers, as_of=as_of
            )

        if self.directory is None:
            return prepare()
        # Same candidates, same configuration, same ten minutes: the same prepared corpus.
        bucket = as_of.replace(minute=as_of.minute - as_of.minute % 10, second=0, microsecond=0)
        key = hashlib.sha256(
            repr(
                (
                    CORPUS_FORMAT,
                    bucket.isoformat(),
                    config,
                    settings.encoder,
                    [(p.id, p.updated_at) for p in papers],
                )
            ).encode()
        ).hexdigest()[:32]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"corpus-{key}.pickle"
        with open(self.directory / f"corpus-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                write_shared(prepare(), path)
                _remove_stale(self.directory, keep=path)
            try:
                return read_shared(path)
            except (OSError, ValueError, pickle.UnpicklingError, EOFError):
                # A damaged file is prepared again.
                corpus = prepare()
                write_shared(corpus, path)
                return corpus


def write_shared(corpus: PreparedCorpus, path: Path) -> None:
    """Write a prepared corpus as a pickle whose arrays lie apart, page-aligned, in
    `<path>.arrays`, so that `read_shared` can map them instead of copying them."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(corpus, protocol=5, buffer_callback=buffers.append)
    offsets, position = [], 0
    tmp_arrays = path.with_suffix(".arrays.tmp")
    with tmp_arrays.open("wb") as out:
        for buffer in buffers:
            raw = buffer.raw()
            position += -position % mmap.PAGESIZE
            out.seek(position)
            out.write(raw)
            offsets.append((position, raw.nbytes))
            position += raw.nbytes
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        pickle.dump(offsets, out, protocol=5)
        out.write(body)
    os.replace(tmp_arrays, path.with_suffix(".arrays"))
    os.replace(tmp, path)


def read_shared(path: Path) -> PreparedCorpus:
    """A corpus written by `write_shared` (by this service: only it writes the cache
    directory). Its arrays are read-only views of the mapped file: every worker process of the
    host reads the same pages of the day's model instead of holding a copy of its own."""
    with path.open("rb") as handle:
        offsets = pickle.load(handle)
        body = handle.read()
    with path.with_suffix(".arrays").open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(mapped)
    corpus = pickle.loads(body, buffers=[view[start : start + n] for start, n in offsets])
    if not isinstance(corpus, PreparedCorpus):
        raise ValueError(f"{path} holds no prepared corpus")
    return corpus


def _remove_stale(directory: Path, *, keep: Path, max_age: float = 86400.0) -> None:
    """Prepared corpora older than a day are of no use to anyone."""
    cutoff = time.time() - max_age
    for old in directory.glob("corpus-*"):
        try:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass
