"""Ranking a knowledge base's chunks for a question.

>>> from retrieval import open_retriever                         # doctest: +SKIP
>>> retriever = open_retriever(load_settings())                 # doctest: +SKIP
>>> [(h.source, h.pages) for h in retriever.search("供应商应当具备哪些条件？", k=3)]  # doctest: +SKIP
[('zhengfu-caigou-fa.pdf', [2]), ...]

``retrieval.adapters`` wraps a retriever for LangChain and LlamaIndex; ``python -m retrieval.eval`` measures it.
"""

from retrieval.harness import QAItem, evaluate, is_hit, load_qa
from retrieval.retriever import CrossEncoderReranker, Reranker, Retriever, open_retriever

__all__ = ["Retriever", "open_retriever", "Reranker", "CrossEncoderReranker", "QAItem", "load_qa", "is_hit",
           "evaluate"]
