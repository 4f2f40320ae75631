"""Combining ranked lists from several retrievers into one.

>>> rrf([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]], k=60)[0][0]
2
"""

from __future__ import annotations

import math
from typing import Sequence

Ranked = Sequence[tuple[int, float]]


def rrf(lists: Sequence[Ranked], *, k: int = 60, weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: sum of ``w / (k + rank)``; it ignores the scales of the input scores."""
    weights = weights or [1.0] * len(lists)
    fused: dict[int, float] = {}
    for ranked, weight in zip(lists, weights):
        for rank, (chunk_id, _) in enumerate(ranked, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def weighted(lists: Sequence[Ranked], *, weights: Sequence[float] | None = None,
             from_zero: Sequence[bool] | None = None) -> list[tuple[int, float]]:
    """Min-max normalised scores, weighted and summed (a candidate missing from a list scores 0 there).
    ``from_zero[i]``: list i is divided by its best score instead, for scores where 0 means no match (BM25):
    min-max would put the last of two matches level with a passage that shares no word at all."""
    weights = weights or [1.0] * len(lists)
    from_zero = from_zero or [False] * len(lists)
    fused: dict[int, float] = {}
    for ranked, weight, zero in zip(lists, weights, from_zero):
        if not ranked:
            continue
        scores = [s for _, s in ranked]
        low, high = (0.0 if zero else min(scores)), max(scores)
        span = (high - low) or 1.0
        for chunk_id, score in ranked:
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * (score - low) / span
    return sorted(fused.items(), key=lambda item: -item[1])


def lexical_share(scores: Sequence[float], reference_rank: int, *, base: float = 0.2, slope: float = 0.3,
                  low: float = 0.2, high: float = 0.9) -> float:
    """BM25's weight in the fusion for one question: ``base + slope * ln(best / score at reference_rank)``,
    clipped to [low, high]; a list shorter than ``reference_rank`` counts 0 there (capped at ln 20).

    A peaked BM25 list (a name, a case number, a term few passages hold) is a confident one; a flat one (a
    question in everyday words that half the corpus shares) is not, and then the embedding should lead
    (``python -m retrieval.eval`` on the dev sets and InsuranceQA, bench/README.md).

    >>> round(lexical_share([12.0] + [10.0] * 49, 50), 3)   # flat: the embedding leads
    0.255
    >>> lexical_share([30.0, 8.0, 2.0], 50)                 # three passages hold the words: BM25 leads
    0.9
    >>> lexical_share([], 50)
    0.2
    """
    if not scores or scores[0] <= 0:
        return low
    reference = scores[reference_rank - 1] if len(scores) >= reference_rank else 0.0
    ratio = min(scores[0] / max(reference, 1e-12), 20.0)
    return min(max(base + slope * math.log(ratio), low), high)
