"""Turning the model's [n] markers into citations of real passages.

>>> from kbcore.types import Chunk, Hit
>>> hits = [Hit(Chunk(1, 1, "a.pdf", 0, 3, 3, "", "第十条 甲。"), 1.0), Hit(Chunk(2, 1, "a.pdf", 1, 4, 5, "", "乙"), 0.5)]
>>> text, cites = resolve_citations("答案是甲[1]，也见【2】和[7]。", hits)
>>> text
'答案是甲[1]，也见[2]和。'
>>> [(c.index, c.pages) for c in cites]
[(1, [3]), (2, [4, 5])]
"""

from __future__ import annotations

import re
from typing import Sequence

from kbcore.types import Citation, Hit

# [1], [1, 2], [1][2], 【1】, ［1］ and "[1]-[3]" style ranges written as [1-3].
_MARKER = re.compile(r"[\[【［]\s*(\d+(?:\s*[,，、\-–]\s*\d+)*)\s*[\]】］]")
SNIPPET_CHARS = 160


def _numbers(group: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*[,，、]\s*", group):
        if re.search(r"[\-–]", part):
            a, b = (int(x) for x in re.split(r"\s*[\-–]\s*", part)[:2])
            out.extend(range(a, b + 1) if 0 < b - a < 10 else [a, b])
        elif part:
            out.append(int(part))
    return out


def _citation(index: int, hit: Hit) -> Citation:
    snippet = hit.chunk.text.strip()
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[:SNIPPET_CHARS] + "…"
    return Citation(index=index, source=hit.source, pages=hit.pages, snippet=snippet, chunk_id=hit.chunk.id)


def resolve_citations(text: str, passages: Sequence[Hit]) -> tuple[str, list[Citation]]:
    """Keep markers that name a passage (normalised to ``[n]``), drop the others from the text, and return the
    cited passages in first-cited order. Nothing is ever cited that the model did not name."""
    cited: list[int] = []

    def replace(match: re.Match) -> str:
        valid = [n for n in _numbers(match.group(1)) if 1 <= n <= len(passages)]
        for n in valid:
            if n not in cited:
                cited.append(n)
        return "".join(f"[{n}]" for n in dict.fromkeys(valid))

    cleaned = _MARKER.sub(replace, text)
    return cleaned, [_citation(n, passages[n - 1]) for n in cited]


def supporting_passage(text: str, passages: Sequence[Hit], min_overlap: float = 0.35) -> int | None:
    """The 1-based passage the answer text overlaps most (character bigrams), when the model cited none.
    Only strong overlap counts: this attributes copied content, it does not guess."""
    def grams(s: str) -> set[str]:
        s = re.sub(r"\s+", "", s)
        return {s[i:i + 2] for i in range(len(s) - 1)}

    answer = grams(text)
    if not answer:
        return None
    best, best_score = None, 0.0
    for i, hit in enumerate(passages, start=1):
        score = len(answer & grams(hit.chunk.text)) / len(answer)
        if score > best_score:
            best, best_score = i, score
    return best if best_score >= min_overlap else None
