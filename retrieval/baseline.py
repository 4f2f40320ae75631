"""The yardstick ``python -m retrieval.eval --modes tfidf`` measures the retriever against: plain character-bigram
TF-IDF over fixed 300-character windows of each document (half-overlapping), cosine-ranked. It knows no words,
headings, chunk boundaries or embeddings, so a retriever that does not beat it on a question set is not earning
its machinery there. Windows come back as ``Hit``s whose chunk spans the pages the window covers.

>>> bigrams("政府 采购法")
['政府', '府采', '采购', '购法']
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter

import numpy as np
from scipy import sparse

from kbcore.store import KnowledgeBase
from kbcore.types import Chunk, Hit
from retrieval.harness import _norm
from retrieval.retriever import _join_overlapping

WINDOW = 300
STRIDE = 150


def bigrams(text: str) -> list[str]:
    """Every pair of adjacent characters, after NFKC, lower-casing and removing whitespace."""
    text = _norm(text).lower()
    return [text[i:i + 2] for i in range(len(text) - 1)]


def windows(chunks: list[Chunk]) -> list[Chunk]:
    """One document's text (its chunks, in order, joined without their overlaps) cut into windows."""
    text, starts = "", []
    for chunk in chunks:
        text = _join_overlapping(text, chunk.text)
        starts.append(len(text) - len(chunk.text))
    offsets = list(range(0, max(len(text) - WINDOW, 0) + 1, STRIDE))
    if offsets[-1] + WINDOW < len(text):  # the tail the stride stepped over
        offsets.append(len(text) - WINDOW)
    out = []
    for start in offsets:
        first = bisect_right(starts, start) - 1  # the chunk the window starts in (starts[0] is 0)
        last = bisect_left(starts, start + WINDOW) - 1  # the last chunk that starts inside it
        head = chunks[first]
        out.append(Chunk(0, head.document_id, head.source, len(out), head.page_start,
                         chunks[last].page_end, "", text[start:start + WINDOW]))
    return out


class TfidfBaseline:
    """Built once over a knowledge base's documents; ``search(question, k)`` like a retriever's."""

    def __init__(self, kb: KnowledgeBase):
        by_document: dict[int, list[Chunk]] = {}
        for chunk in kb.chunks():
            by_document.setdefault(chunk.document_id, []).append(chunk)
        self.windows = [w for chunks in by_document.values() for w in windows(chunks)]
        self.vocabulary: dict[str, int] = {}
        rows, cols, counts = [], [], []
        for row, window in enumerate(self.windows):
            for gram, count in Counter(bigrams(window.text)).items():
                rows.append(row)
                cols.append(self.vocabulary.setdefault(gram, len(self.vocabulary)))
                counts.append(count)
        n = len(self.windows)
        matrix = sparse.csr_matrix((np.asarray(counts, np.float32), (rows, cols)), shape=(n, len(self.vocabulary)))
        df = np.bincount(np.asarray(cols, np.int64), minlength=len(self.vocabulary))
        self.idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)  # smoothed, as scikit-learn's default
        matrix = matrix @ sparse.diags(self.idf)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        self.matrix = sparse.diags(1 / np.maximum(norms, 1e-12)) @ matrix

    def search(self, question: str, k: int) -> list[Hit]:
        counts = Counter(g for g in bigrams(question) if g in self.vocabulary)
        if not counts:
            return []
        query = np.zeros(len(self.vocabulary), np.float32)
        for gram, count in counts.items():
            query[self.vocabulary[gram]] = count * self.idf[self.vocabulary[gram]]
        scores = self.matrix @ query
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.windows[i], float(scores[i]), rank=r + 1) for r, i in enumerate(best) if scores[i] > 0]
