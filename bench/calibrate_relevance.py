"""Calibrates ``llm.min_relevance``: the best dense cosine below which the answer is "not in the documents".

    .venv/bin/python bench/calibrate_relevance.py --kb KB --answerable A.jsonl[@OTHER_KB] [...]
        --unanswerable U.jsonl [...] [--max-false-refusals 0.015]

For each candidate threshold it prints the share of answerable questions that would be refused (false refusals)
and of unanswerable ones that would be (right refusals), and recommends the highest threshold whose false
refusals stay within ``--max-false-refusals`` on every answerable set. The last line is one JSON object.
A set given as ``PATH@KB`` is asked of that knowledge base instead of ``--kb`` (the look-alike judgments have
their own). Retrieval only: no model is loaded. The sets the default was calibrated on are in tests/data/answers and
../shared/eval/qa (see bench/README.md); recalibrate for another embedding model or a very different corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kbcore.config import load_settings  # noqa: E402
from llm.eval import load_items  # noqa: E402
from retrieval import open_retriever  # noqa: E402


def best_cosines(retriever, path: str, k: int) -> list[float]:
    return [max((h.dense for h in retriever.search(item.question, k) if h.dense is not None), default=0.0)
            for item in load_items(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", required=True)
    parser.add_argument("--answerable", action="append", required=True)
    parser.add_argument("--unanswerable", action="append", required=True)
    # Half the 3% the answer harness allows: questions on documents nobody here wrote score lower than ours.
    parser.add_argument("--max-false-refusals", type=float, default=0.015)
    parser.add_argument("--config")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    retrievers: dict[str, object] = {}

    def cosines(spec: str) -> list[float]:
        path, _, kb = spec.partition("@")
        kb = kb or args.kb
        if kb not in retrievers:
            retrievers[kb] = open_retriever(settings, kb)
        return best_cosines(retrievers[kb], path, settings.retrieval.top_k)

    answerable = {Path(spec.partition("@")[0]).stem: cosines(spec) for spec in args.answerable}
    unanswerable = [c for spec in args.unanswerable for c in cosines(spec)]
    candidates = sorted({round(c, 3) for cs in answerable.values() for c in cs} | {settings.llm.min_relevance})

    def refused(cosines, threshold):
        return sum(c < threshold for c in cosines) / len(cosines)

    print(f"{'threshold':>9} " + " ".join(f"{name[:14]:>14}" for name in answerable) + f" {'unanswerable':>13}")
    rows, recommended = [], None
    for threshold in (t for t in candidates if t <= max(max(cs) for cs in answerable.values())):
        false = {name: refused(cs, threshold) for name, cs in answerable.items()}
        right = refused(unanswerable, threshold)
        rows.append({"threshold": threshold, "false_refusals": false, "right_refusals": right})
        if max(false.values()) <= args.max_false_refusals:
            recommended = rows[-1]
    top = (recommended or rows[-1])["threshold"] + 0.02
    shown = [r for r in rows if r["threshold"] <= top]
    for row in shown[:: max(1, len(shown) // 30)] + [r for r in rows if r is recommended]:
        mark = " <- recommended" if row is recommended else (" (current)" if row["threshold"] ==
                                                             settings.llm.min_relevance else "")
        print(f"{row['threshold']:>9.3f} " + " ".join(f"{v:>14.3f}" for v in row["false_refusals"].values())
              + f" {row['right_refusals']:>13.3f}{mark}")
    print(json.dumps({"current": settings.llm.min_relevance, "recommended": recommended,
                      "n_answerable": {k: len(v) for k, v in answerable.items()}, "n_unanswerable": len(unanswerable)},
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
