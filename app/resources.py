"""Heavy objects shared by every session of the app process: the LLM and one retriever per knowledge base.

``st.cache_resource`` keeps them for the life of the process. Keys are plain strings built from the settings
that matter, so changing temperature or top-k never reloads anything, while switching model, adapter or
knowledge base does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from kbcore.config import LLMSettings, Settings


def model_key(settings: Settings) -> str:
    llm = settings.llm
    return repr((llm.model, llm.quantization, llm.device, llm.adapter, str(settings.cache_dir),
                 str(settings.adapters_dir)))


def retriever_key(settings: Settings, kb_path: Path) -> str:
    # top_k is passed per question, so it is not part of what makes a retriever different.
    retrieval = dataclasses.replace(settings.retrieval, top_k=0)
    return repr((str(Path(kb_path).resolve()), settings.embedding, retrieval, str(settings.cache_dir)))


# Keys loaded so far in this process: only to word the spinner ("loading…" vs nothing).
_loaded_models: set[str] = set()
_open_retrievers: set[str] = set()


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_model(key: str, _llm: LLMSettings, _cache_dir: Path, _adapters_dir: Path):
    from engine.models import load_model

    loaded = load_model(_llm, _cache_dir, adapters_dir=_adapters_dir)
    _loaded_models.add(key)
    return loaded


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_retriever(key: str, _settings: Settings, _kb_path: Path):
    from retrieval import open_retriever

    retriever = open_retriever(_settings, _kb_path)
    _open_retrievers.add(key)
    return retriever


def get_model(settings: Settings):
    """The loaded LLM for ``settings.llm`` (with its adapter), loaded once per process."""
    return _load_model(model_key(settings), settings.llm, settings.cache_dir, settings.adapters_dir)


def get_retriever(settings: Settings, kb_path: Path):
    """The retriever over ``kb_path``; it notices new ingests and deletions by itself (kb generation)."""
    return _open_retriever(retriever_key(settings, kb_path), settings, Path(kb_path))


def model_is_loaded(settings: Settings) -> bool:
    """Whether this process already holds the model (so the spinner can say a load is coming)."""
    return model_key(settings) in _loaded_models


def retriever_is_open(settings: Settings, kb_path: Path) -> bool:
    return retriever_key(settings, kb_path) in _open_retrievers
