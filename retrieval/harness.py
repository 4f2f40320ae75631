"""Retrieval-quality harness: hit@k and MRR@10 under the hit rule of ../shared/eval/README.md.

A retrieved chunk is a hit for a question when its source file name equals ``source`` (if given; a list names
several correct files) AND its page range intersects ``pages`` (if given) AND its text contains one of
``answers`` (if given), after removing all whitespace and applying NFKC to both.

>>> from kbcore.types import Chunk, Hit
>>> item = QAItem(id="q", question="?", source="a.pdf", pages=(2,), answers=("良好 的商业信誉",))
>>> chunk = Chunk(1, 1, "docs/a.pdf", 0, 1, 2, "", "具有良好的商业信誉和健全的财务会计制度")
>>> is_hit(Hit(chunk, 1.0), item)
True
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kbcore.types import Hit

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    source: str | None = None
    pages: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()
    # Further correct files beside ``source`` (a question set may list several).
    also: tuple[str, ...] = ()

    @property
    def gold_files(self) -> tuple[str, ...]:
        """The file names that count as the right document; () when any file does."""
        return tuple(Path(s).name for s in (self.source, *self.also) if s)


@dataclass
class Metrics:
    n: int = 0
    hits_at: dict[int, int] = field(default_factory=dict)
    reciprocal_rank_sum: float = 0.0
    misses: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {"n": self.n}
        for k in sorted(self.hits_at):
            out[f"hit@{k}"] = round(self.hits_at[k] / self.n, 4) if self.n else 0.0
        out["mrr@10"] = round(self.reciprocal_rank_sum / self.n, 4) if self.n else 0.0
        return out


def _norm(text: str) -> str:
    return _SPACE.sub("", unicodedata.normalize("NFKC", text))


def read_items(path: str | Path, make: Callable[[dict, int], object]) -> list:
    """``make(raw, line_no)`` for each JSON line of a question set; a bad line raises ValueError naming it."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                items.append(make(json.loads(line), line_no))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: not a question item ({exc})") from None
    return items


def gold_sources(raw: dict) -> dict:
    """``source`` and ``also`` from a question's ``source``, a file name or a list of them."""
    source = raw.get("source")
    if isinstance(source, list):
        return {"source": source[0] if source else None, "also": tuple(source[1:])}
    return {"source": source}


def load_qa(path: str | Path) -> list[QAItem]:
    return read_items(path, lambda raw, line_no: QAItem(
        id=str(raw.get("id", line_no)), question=raw["question"], **gold_sources(raw),
        pages=tuple(raw.get("pages") or ()), answers=tuple(raw.get("answers") or ())))


def is_hit(hit: Hit, item: QAItem) -> bool:
    chunk = hit.chunk
    if item.source and Path(chunk.source).name not in item.gold_files:
        return False
    if item.pages and not any(chunk.page_start <= p <= chunk.page_end for p in item.pages):
        return False
    if item.answers:
        text = _norm(chunk.text)
        return any(_norm(a) in text for a in item.answers)
    return True


def evaluate(search: Callable[[str, int], Sequence[Hit]], items: Iterable[QAItem],
             ks: Sequence[int] = (1, 3, 5, 10)) -> Metrics:
    """Run every question through ``search(question, k)`` and score it with the hit rule."""
    depth = max(max(ks), 10)
    metrics = Metrics(hits_at={k: 0 for k in ks})
    for item in items:
        hits = search(item.question, depth)
        first = next((rank for rank, h in enumerate(hits, start=1) if is_hit(h, item)), None)
        metrics.n += 1
        for k in ks:
            metrics.hits_at[k] += first is not None and first <= k
        if first is not None and first <= 10:
            metrics.reciprocal_rank_sum += 1.0 / first
        if first != 1:
            metrics.misses.append(f"{item.id} (first hit at {first or '-'}): {item.question}")
    return metrics
