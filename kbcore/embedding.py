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
