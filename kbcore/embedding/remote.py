"""Embeddings from an OpenAI-compatible server (``embedding.backend = "openai"``): ``POST /v1/embeddings`` in batches
of ``embedding.batch_size``.

The model id a knowledge base records is ``embedding.model``, the name the server serves it under, and the
dimension is what the server's first answer holds, so a knowledge base built with another model (or the same one
under another name) is an ``EmbeddingMismatchError`` naming both, never a mix of vectors. The e5 prefixes are added
here, as the local backends add them (``resolve_prefixes``): servers embed the text they are sent as it is.
Vectors are L2-normalised here too, whatever the server does.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from kbcore.config import EmbeddingSettings
from kbcore.embedding.base import BatchEmbedder, resolve_prefixes
from kbcore.remote import OpenAIClient, RemoteError


class OpenAIEmbedder(BatchEmbedder):
    def __init__(self, settings: EmbeddingSettings):
        self.client = OpenAIClient("embedding", settings.base_url, api_key=settings.api_key,
                                   timeout=settings.timeout)
        self.model_id = settings.model
        self.batch_size = max(1, settings.batch_size)
        self.query_prefix, self.passage_prefix = resolve_prefixes(settings)
        self._dimension: int | None = None
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        """The server's vector size, from its first answer (asked for with a short text when nothing was
        embedded yet)."""
        if self._dimension is None:
            self._embed(["dimension"], query=False)
        return self._dimension

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        prefix = self.query_prefix if query else self.passage_prefix
        batches = [self._batch([prefix + t for t in texts[i:i + self.batch_size]])
                   for i in range(0, len(texts), self.batch_size)]
        vectors = np.concatenate(batches).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def _batch(self, texts: Sequence[str]) -> np.ndarray:
        answer = self.client.post("/embeddings", {"model": self.model_id, "input": list(texts),
                                                  "encoding_format": "float"})
        where = f"the server at {self.client.base_url}"
        try:
            rows = sorted(answer["data"], key=lambda d: d.get("index", 0))
            vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"{where} answered /embeddings without a list of float vectors ({exc!r}); is it "
                              f"an OpenAI-compatible embedding server?") from None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise RemoteError(f"{where} answered {len(vectors)} vectors for {len(texts)} texts")
        with self._lock:
            if self._dimension is None:
                self._dimension = vectors.shape[1]
        if vectors.shape[1] != self._dimension:
            raise RemoteError(f"{where} answered vectors of dimension {vectors.shape[1]}, earlier ones had "
                              f"{self._dimension}: it serves another model under {self.model_id!r} now")
        return vectors
