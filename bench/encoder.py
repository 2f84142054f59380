"""The benchmark's sentence encoder: the product's (digest/encoder.py, all-MiniLM-L6-v2 as an int8
ONNX graph, no torch) behind `encode(texts)`, with an on-disk cache so a re-run encodes nothing
twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench-embeddings"


class Encoder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class CachedEncoder:
    """An encoder whose rows are kept on disk, keyed by model name and a hash of the text."""

    def __init__(self, encoder: Encoder, cache_dir: Path = CACHE_DIR) -> None:
        self.name = encoder.name
        self.inner = encoder
        self.encoded = 0  # texts actually run through the model in this process
        self._dir = cache_dir / encoder.name
        self._keys: dict[str, int] = {}
        self._rows = np.zeros((0, 384), dtype=np.float16)
        self._load()

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._keys}
        if missing:
            # Another run (a backfill) may have encoded them meanwhile.
            self._load()
            missing = {k: t for k, t in missing.items() if k not in self._keys}
        if missing:
            new = self.inner.encode(list(missing.values()))
            start = len(self._rows)
            self._rows = np.concatenate([self._rows, new.astype(np.float16)])
            self._keys.update({k: start + i for i, k in enumerate(missing)})
            self.encoded += len(missing)
            self._save()
        rows = self._rows[[self._keys[k] for k in keys]].astype(np.float32)
        # float16 storage: renormalise so every row is unit length again.
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        # The ranker's TopicModel takes an encoder as a callable.
        return self.encode(texts)

    def _load(self) -> None:
        path = self._dir / "cache.npz"
        if path.exists():
            with np.load(path) as data:
                self._merge(data["keys"].tolist(), data["rows"])

    def _save(self) -> None:
        """Merge with what another run wrote meanwhile, under a lock, then replace the file:
        several benchmark runs may share the cache."""
        import fcntl

        self._dir.mkdir(parents=True, exist_ok=True)
        with open(self._dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self._dir / "cache.npz"
            if path.exists():
                with np.load(path) as data:
                    self._merge(data["keys"].tolist(), data["rows"])
            keys = sorted(self._keys, key=self._keys.__getitem__)
            with open(self._dir / "cache.tmp.npz", "wb") as handle:
                np.savez(handle, keys=np.array(keys), rows=self._rows)
            (self._dir / "cache.tmp.npz").replace(path)

    def _merge(self, keys: list[str], rows: np.ndarray) -> None:
        new = [i for i, k in enumerate(keys) if k not in self._keys]
        if new:
            start = len(self._rows)
            self._rows = np.concatenate([self._rows, rows[new].astype(np.float16)])
            self._keys.update({keys[i]: start + n for n, i in enumerate(new)})


class ProductEncoder:
    """The product's encoder (digest/encoder.py: the same int8 graph and tokenizer file), under
    the benchmark's cache."""

    def __init__(self) -> None:
        from digest.encoder import MODEL_NAME, load_encoder

        encoder = load_encoder(kind="minilm")
        if encoder is None:
            raise RuntimeError("the encoder's packages are not installed (pip install -e .)")
        self.name = MODEL_NAME
        self._encoder = encoder

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._encoder.encode(texts)


def load_encoder() -> CachedEncoder:
    return CachedEncoder(ProductEncoder())
