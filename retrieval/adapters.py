"""Thin adapters that let LangChain and LlamaIndex use a ``Retriever``. Framework types stay in here.

Imports are lazy so that the core never needs either framework to run.
"""

from __future__ import annotations

from typing import Any

from kbcore.types import Hit
from retrieval.retriever import Retriever


def hit_metadata(hit: Hit) -> dict[str, Any]:
    chunk = hit.chunk
    return {"source": chunk.source, "pages": chunk.pages, "heading": chunk.heading, "chunk_id": chunk.id,
            "score": hit.score, "dense": hit.dense, "lexical": hit.lexical}


def as_langchain_retriever(retriever: Retriever, k: int | None = None):
    """A ``langchain_core.retrievers.BaseRetriever`` returning ``Document``s with source/pages metadata."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class KnowledgeBaseRetriever(BaseRetriever):
        inner: Any
        top_k: int | None = None

        def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
            return [Document(page_content=h.text, metadata=hit_metadata(h))
                    for h in self.inner.search(query, self.top_k)]

    return KnowledgeBaseRetriever(inner=retriever, top_k=k)


def as_llamaindex_retriever(retriever: Retriever, k: int | None = None):
    """A ``llama_index.core.retrievers.BaseRetriever`` returning ``NodeWithScore``s."""
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class KnowledgeBaseRetriever(BaseRetriever):
        def __init__(self, inner: Retriever, top_k: int | None):
            super().__init__()
            self._inner, self._top_k = inner, top_k

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [NodeWithScore(node=TextNode(text=h.text, id_=str(h.chunk.id), metadata=hit_metadata(h)),
                                  score=h.score)
                    for h in self._inner.search(query_bundle.query_str, self._top_k)]

    return KnowledgeBaseRetriever(retriever, k)
