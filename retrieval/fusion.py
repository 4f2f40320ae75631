"""Combining ranked lists from several retrievers into one.

>>> rrf([[(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]], k=60)[0][0]
2
"""

from __future__ import annotations

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


def weighted(lists: Sequence[Ranked], *, weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Min-max normalised scores, weighted and summed (a candidate missing from a list scores 0 there)."""
    weights = weights or [1.0] * len(lists)
    fused: dict[int, float] = {}
    for ranked, weight in zip(lists, weights):
        if not ranked:
            continue
        scores = [s for _, s in ranked]
        low, high = min(scores), max(scores)
        span = (high - low) or 1.0
        for chunk_id, score in ranked:
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * (score - low) / span
    return sorted(fused.items(), key=lambda item: -item[1])
