"""Heavy objects shared by every session of the app process: the LLM and one retriever per knowledge base.

The model comes from the runtime's own cache (``engine.models.load_model``). Retrievers are kept by
``st.cache_resource`` under plain-string keys built from the settings that matter, so changing top-k never
reopens anything, while switching knowledge base or embedding does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from kbcore.config import Settings


def retriever_key(settings: Settings, kb_path: Path) -> str:
    # top_k is passed per question, so it is not part of what makes a retriever different.
    retrieval = dataclasses.replace(settings.retrieval, top_k=0)
    return repr((str(Path(kb_path).resolve()), settings.embedding, retrieval, str(settings.cache_dir)))


# Keys opened so far in this process: only to word the spinner.
_open_retrievers: set[str] = set()


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_retriever(key: str, _settings: Settings, _kb_path: Path):
    from retrieval import open_retriever

    retriever = open_retriever(_settings, _kb_path)
    _open_retrievers.add(key)
    return retriever


def get_model(settings: Settings):
    """The loaded LLM for ``settings.llm`` (with its adapter), loaded once per process."""
    from engine.models import load_model

    return load_model(settings.llm, settings.cache_dir, adapters_dir=settings.adapters_dir)


def get_retriever(settings: Settings, kb_path: Path):
    """The retriever over ``kb_path``; it notices new ingests and deletions by itself (kb generation)."""
    return _open_retriever(retriever_key(settings, kb_path), settings, Path(kb_path))


def model_is_loaded(settings: Settings) -> bool:
    """Whether this process already holds the model (so the spinner can say a load is coming)."""
    from engine.models import is_loaded

    return is_loaded(settings.llm, settings.cache_dir, settings.adapters_dir)


def retriever_is_open(settings: Settings, kb_path: Path) -> bool:
    return retriever_key(settings, kb_path) in _open_retrievers
