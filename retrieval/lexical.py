"""BM25 over jieba search tokens, as one sparse matrix product per query.

The per-document BM25 weight of a term does not depend on the query, so it is computed once
(``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))``) into a sparse chunks x terms matrix;
a query is then ``W[:, terms] @ counts``, cheap even at 100k chunks (bench/bench_retrieval.py).

>>> index = BM25Index.build([1, 2, 3], ["政府 采购 供应商", "招标 投标 评标", "软件包 安装"])
>>> [cid for cid, _ in index.search(["招标"], k=2)]
[2]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse


@dataclass
class BM25Index:
    chunk_ids: np.ndarray
    vocabulary: dict[str, int]
    weights: sparse.csc_matrix  # chunks x terms

    @classmethod
    def build(cls, chunk_ids: Sequence[int], token_strings: Sequence[str], *, k1: float = 1.2, b: float = 0.75
              ) -> "BM25Index":
        vocabulary: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[int] = []
        lengths = np.zeros(len(token_strings), dtype=np.float32)
        for row, tokens in enumerate(token_strings):
            terms = tokens.split()
            lengths[row] = len(terms)
            for term, tf in Counter(terms).items():
                rows.append(row)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                tfs.append(tf)
        n = len(token_strings)
        tf = np.asarray(tfs, dtype=np.float32)
        rows_a = np.asarray(rows, dtype=np.int64)
        cols_a = np.asarray(cols, dtype=np.int64)
        df = np.bincount(cols_a, minlength=len(vocabulary)).astype(np.float32)
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avg = float(lengths.mean()) if n and lengths.mean() > 0 else 1.0
        norm = k1 * (1.0 - b + b * lengths[rows_a] / avg)
        values = idf[cols_a] * tf * (k1 + 1.0) / (tf + norm)
        weights = sparse.csc_matrix((values, (rows_a, cols_a)), shape=(n, len(vocabulary)), dtype=np.float32)
        return cls(np.asarray(chunk_ids, dtype=np.int64), vocabulary, weights)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def search(self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None
               ) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) pairs with a positive score, best first. ``allowed``: a boolean row mask."""
        counts = Counter(t for t in query_tokens if t in self.vocabulary)
        if not counts or k <= 0:
            return []
        cols = [self.vocabulary[t] for t in counts]
        qtf = np.fromiter(counts.values(), dtype=np.float32)
        scores = np.asarray(self.weights[:, cols] @ qtf).ravel()
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        positive = np.flatnonzero(scores > 0)
        if len(positive) > k:
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        return [(int(self.chunk_ids[i]), float(scores[i])) for i in order]
