"""Retrieval tests run on every vector backend: the local FAISS index and Milvus Lite, over the same knowledge base
(kb.sqlite holds the text and vectors; each backend's index is derived from it)."""

import pytest


@pytest.fixture(scope="module", params=["local", "milvus"])
def eval_retriever(request, eval_kb_path, settings):
    from retrieval import open_retriever

    return open_retriever(settings.with_overrides(store={"backend": request.param}), eval_kb_path)
