"""Answer-level harness: ``python -m llm.eval --kb KB --qa QA.jsonl [--qa ...] [--limit N] [--oracle] [--json]
[--variant NAME:SECTION.FIELD=VALUE,...]``

``retrieval.eval`` stops at the passages; this scores the answer a user reads. Per question set and
configuration it prints one table row, and as its last line one JSON object with every row (``--json`` adds
each answer and its grade).

Per answer (``grade``):
- **correct**: an answerable question's answer contains its gold facts after ``llm.checks.fold`` (NFKC, no
  whitespace, Chinese numerals as digits): any one of ``answers`` (all of them with ``"require": "all"``), or,
  for an item with only a reference ``answer``, character recall of the reference >= ``REFERENCE_RECALL``. An
  unanswerable question (``"answerable": false``) is correct when refused.
- **citation precision**: of the passages an answer cites, the share from the gold document that lie on the gold
  pages or hold a gold fact.
- **refusals**: the share of unanswerable questions refused, and of answerable ones refused (lower is better).
- **degenerate**: the answer shown is empty, a copied label or placeholder, the question echoed, a list of
  passage labels or a loop (``llm.checks.degenerate_reason``); **caught**: the model's own output was, or it
  was no answer for another reason ``Answer.degenerate`` names, and the answer stage replaced it.
- **flagged**: the answer holds a sentence, number or name its citations do not (``Answer.unsupported``), which the
  app shows as unverified.
- **right document**: correct, and every citation from the gold document (the look-alike measure).
- seconds per answer, retrieval included.

``--oracle`` adds rows where the reader gets the gold document's passages (retrieval restricted to it, no
relevance threshold), so reading losses are told apart from retrieval losses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kbcore.types import Answer, Citation
from llm.checks import degenerate_reason, fold
from retrieval.harness import QAItem, gold_sources, read_items

# A reference-only item (the FAQ's section openings) counts as answered when the answer recalls this share of
# the reference's characters.
REFERENCE_RECALL = 0.5


@dataclass(frozen=True)
class AnswerItem(QAItem):
    """A retrieval QA item whose ``answers`` are the facts a correct answer states, and more."""

    require_all: bool = False  # every one of ``answers``, not any one
    reference: str | None = None  # a reference answer, for items with no short facts
    answerable: bool = True


def load_items(path: str | Path) -> list[AnswerItem]:
    """Question sets in ../shared/eval's QA format, plus ``answerable``, ``require`` and ``facts`` (gold facts
    for answers where ``answers`` are the retrieval hit rule's longer phrases)."""
    def make(raw: dict, line_no: int) -> AnswerItem:
        reference = raw.get("reference", raw.get("answer"))
        return AnswerItem(id=str(raw.get("id", line_no)), question=raw["question"], **gold_sources(raw),
                          pages=tuple(int(p) for p in raw.get("pages") or ()),
                          answers=tuple(raw.get("facts") or raw.get("answers") or ()),
                          require_all=raw.get("require") == "all",
                          reference=reference if isinstance(reference, str) else None,
                          answerable=bool(raw.get("answerable", True)))

    return read_items(path, make)


def char_recall_f1(reference: str, answer: str) -> tuple[float, float]:
    """Character-level recall and F1 of ``answer`` against ``reference`` (bags of folded characters).

    >>> char_recall_f1("良好的商业信誉", "具有良好的商业信誉和财务制度")
    (1.0, 0.6666666666666666)
    """
    from collections import Counter

    ref, got = Counter(fold(reference)), Counter(fold(answer))
    common = sum((ref & got).values())
    if not common:
        return 0.0, 0.0
    recall, precision = common / sum(ref.values()), common / sum(got.values())
    return recall, 2 * recall * precision / (recall + precision)


def states_facts(item: AnswerItem, text: str) -> bool:
    """Whether ``text`` states the item's gold facts (any one, or all with ``require_all``).

    >>> item = AnswerItem("q", "多少天？", answers=("十五日",))
    >>> states_facts(item, "应当在15日内提出。"), states_facts(item, "应当在五日内提出。")
    (True, False)
    """
    answer = fold(text)
    found = [fold(f) in answer for f in item.answers]
    return all(found) if item.require_all else any(found)


def citation_is_precise(citation: Citation, passage_text: str, item: AnswerItem) -> bool:
    """A cited passage is from the gold document and lies on a gold page or holds a gold fact."""
    if item.source and Path(citation.source).name not in item.gold_files:
        return False
    if item.pages and set(citation.pages) & set(item.pages):
        return True
    text = fold(passage_text)
    return any(fold(f) in text for f in item.answers) or not (item.pages or item.answers)


@dataclass
class Grade:
    id: str
    answerable: bool
    refused: bool
    correct: bool
    citations: int
    precise_citations: int
    right_document: bool
    degenerate: str | None
    caught: str | None
    unsupported: bool
    recall: float | None
    f1: float | None
    seconds: float


def grade(item: AnswerItem, answer: Answer, seconds: float) -> Grade:
    refused = not answer.found
    recall = f1 = None
    if item.reference and not refused:
        recall, f1 = char_recall_f1(item.reference, answer.text)
    if not item.answerable:
        correct = refused
    elif refused:
        correct = False
    elif item.answers:
        correct = states_facts(item, answer.text)
    else:
        correct = recall is not None and recall >= REFERENCE_RECALL
    texts = {h.chunk.id: h.text for h in answer.hits}
    precise = sum(citation_is_precise(c, texts.get(c.chunk_id, c.snippet), item) for c in answer.citations)
    right_document = correct and item.answerable and bool(answer.citations) and all(
        Path(c.source).name in item.gold_files for c in answer.citations) if item.source else correct
    shown = None if refused else degenerate_reason(answer.text, item.question, [h.source for h in answer.hits])
    return Grade(item.id, item.answerable, refused, correct, len(answer.citations), precise, right_document,
                 shown, answer.degenerate, bool(answer.unsupported), recall, f1, seconds)


def summarize(grades: Sequence[Grade]) -> dict:
    """The table row of a set of grades. Rates are over the questions they concern: refusals of unanswerable
    questions over those, citation precision over all citations made."""
    answerable = [g for g in grades if g.answerable]
    unanswerable = [g for g in grades if not g.answerable]
    answered = [g for g in answerable if not g.refused]
    citations = sum(g.citations for g in grades if g.answerable)

    def rate(part, whole):
        return round(len(part) / len(whole), 4) if whole else None

    seconds = sorted(g.seconds for g in grades)
    f1s = [g.f1 for g in answerable if g.f1 is not None]
    return {
        "n": len(grades),
        "correct": rate([g for g in answerable if g.correct], answerable),
        "citation_precision": round(sum(g.precise_citations for g in answerable) / citations, 4) if citations else None,
        "cited": rate([g for g in answered if g.citations], answered),
        "refused_unanswerable": rate([g for g in unanswerable if g.refused], unanswerable),
        "refused_answerable": rate([g for g in answerable if g.refused], answerable),
        "degenerate": rate([g for g in grades if g.degenerate], grades),
        "caught": rate([g for g in grades if g.caught], grades),
        "unsupported": rate([g for g in answered if g.unsupported], answered),
        "right_document": rate([g for g in answerable if g.right_document], answerable),
        "reference_f1": round(statistics.fmean(f1s), 4) if f1s else None,
        "p50_s": round(statistics.median(seconds), 2) if seconds else None,
        "p90_s": round(seconds[int(0.9 * (len(seconds) - 1))], 2) if seconds else None,
    }


def run(answerer, items: Sequence[AnswerItem], *, oracle: bool = False, log=None) -> list[tuple[Grade, Answer]]:
    """Answer and grade every item with ``answerer`` (an ``llm.Answerer``); with ``oracle`` an answerable item
    with a source is read from its gold document only."""
    out = []
    for item in items:
        sources = list(item.gold_files) if oracle and item.answerable and item.source else None
        started = time.perf_counter()
        answer = answerer.answer(item.question, sources=sources)
        graded = grade(item, answer, time.perf_counter() - started)
        out.append((graded, answer))
        if log is not None:
            mark = "ok " if graded.correct else "BAD"
            log(f"  {mark} {item.id} {graded.seconds:5.1f}s {graded.degenerate or ''}/{graded.caught or ''} "
                f"| {item.question[:40]} -> "
                f"{answer.text[:90]!r}")
    return out


def _parse_variant(spec: str) -> tuple[str, dict]:
    """``name:llm.max_new_tokens=128,retrieval.top_k=3`` -> ("name", {"llm": {...}, "retrieval": {...}})."""
    name, _, assignments = spec.partition(":")
    overrides: dict = {}
    for assignment in filter(None, (a.strip() for a in assignments.split(","))):
        key, sep, value = assignment.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"variant {spec!r}: expected SECTION.FIELD=VALUE, got {assignment!r}")
        section, field_name = key.split(".", 1)
        overrides.setdefault(section, {})[field_name] = value
    return name, overrides


COLUMNS = (("correct", "correct"), ("citation_precision", "cite-prec"), ("refused_unanswerable", "refuse-no"),
           ("refused_answerable", "refuse-yes"), ("degenerate", "degen"), ("caught", "caught"), ("unsupported", "flagged"),
           ("right_document", "right-doc"), ("reference_f1", "ref-F1"), ("p50_s", "p50 s"), ("p90_s", "p90 s"))


def format_row(label: str, row: dict) -> str:
    cells = " ".join(f"{'-' if row[key] is None else row[key]:>{max(len(title), 6)}}" for key, title in COLUMNS)
    return f"{label:<34} {row['n']:>4} {cells}"


def header() -> str:
    return f"{'set / configuration':<34} {'n':>4} " + " ".join(f"{t:>{max(len(t), 6)}}" for _, t in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", help="knowledge-base folder (default: the configured one)")
    parser.add_argument("--qa", required=True, action="append", help="question set JSONL (repeatable)")
    parser.add_argument("--limit", type=int, help="first N questions of each set")
    parser.add_argument("--oracle", action="store_true", help="also read from the gold document's passages")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:SECTION.FIELD=VALUE,... a configuration beside the default (repeatable)")
    parser.add_argument("--no-default", action="store_true", help="only the --variant configurations")
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--json", action="store_true", help="put every answer and its grade in the JSON line")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each answer as it is graded")
    args = parser.parse_args(argv)

    from kbcore.config import load_settings
    from kbcore.store import KnowledgeBaseError
    from llm.answerer import Answerer
    from retrieval import open_retriever

    settings = load_settings(args.config)
    try:
        variants = ([] if args.no_default else [("default", {})]) + [_parse_variant(v) for v in args.variant]
        configured = [(name, settings.with_overrides(**overrides)) for name, overrides in variants]
        sets = [(Path(path).stem, load_items(path)[: args.limit]) for path in args.qa]
        retrievers = {}
        for _, s in configured:
            if s.retrieval not in retrievers:
                retrievers[s.retrieval] = open_retriever(s, args.kb)
    except (KnowledgeBaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(header(), flush=True)
    rows, details = {}, {}
    log = (lambda line: print(line, flush=True)) if args.verbose else None
    for set_name, items in sets:
        for name, variant in configured:
            retriever = retrievers[variant.retrieval]
            for oracle in (False, True) if args.oracle else (False,):
                # The gold document is relevant by definition: no threshold between it and the reader.
                answerer = Answerer(variant.with_overrides(llm={"min_relevance": -1.0}) if oracle else variant,
                                    retriever)
                results = run(answerer, items, oracle=oracle, log=log)
                label = f"{set_name} / {name}{' / oracle' if oracle else ''}"
                rows[label] = summarize([g for g, _ in results])
                print(format_row(label, rows[label]), flush=True)
                if args.json:
                    details[label] = [{"id": g.id, "answer": a.text, "correct": g.correct, "refused": g.refused,
                                       "degenerate": g.degenerate, "caught": g.caught, "citations": [(c.source, c.pages) for c in
                                                                                 a.citations]}
                                      for g, a in results]
    first = next(iter(rows))
    print(json.dumps({**rows[first], "row": first, "rows": rows, **({"answers": details} if args.json else {})},
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
