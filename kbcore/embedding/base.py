"""The embedder contract (``Embedder``), the preset it can build offline, and the e5 prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from kbcore.config import EmbeddingSettings


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dimension: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class BatchEmbedder:
    """The ``Embedder`` methods of a backend that embeds a list of texts at once: a subclass gives ``model_id``,
    ``dimension`` and ``_embed``; an empty list is answered here without waking the model."""

    model_id: str
    dimension: int

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors, as queries or as passages."""
        raise NotImplementedError

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed(list(texts), query=False)

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([text], query=True)[0]


@dataclass(frozen=True)
class Preset:
    """A model we can build offline from a PyPI data package."""

    model_id: str
    dimension: int
    query_prefix: str
    passage_prefix: str


E5_SMALL = Preset("multilingual-e5-small", 384, "query: ", "passage: ")
PRESETS = {E5_SMALL.model_id: E5_SMALL}

Precision = Literal["fp32", "bf16", "int8", "fp16"]
DEFAULT_CUDA_PRECISION: Precision = "fp16"


def default_cpu_precision() -> Precision:
    """bf16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX), else fp32: emulated bf16 is slower than
    fp32, and int8 drifted from the reference with vectors that changed with the batch (bench/bench_embed.py)."""
    import torch

    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def resolve_prefixes(settings: EmbeddingSettings) -> tuple[str, str]:
    """(query prefix, passage prefix): explicit settings win, then the preset's, else none."""
    preset = PRESETS.get(settings.model)
    query = settings.query_prefix if settings.query_prefix is not None else (preset.query_prefix if preset else "")
    passage = (settings.passage_prefix if settings.passage_prefix is not None
               else (preset.passage_prefix if preset else ""))
    return query, passage


def as_matrix(vectors, count: int, dimension: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(count, dimension))
