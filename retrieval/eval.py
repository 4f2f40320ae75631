"""``python -m retrieval.eval --kb KB_DIR --qa QA.jsonl [--k 10] [--modes hybrid,dense,bm25]``

Prints a table with one row per configuration and, as its last line, one JSON object with the metrics of the
first configuration (``n``, ``hit@1``, ``hit@5``, ``hit@10``, ``mrr@10``) plus every configuration under ``modes``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kbcore.config import load_settings
from kbcore.store import KnowledgeBaseError
from retrieval.baseline import TfidfBaseline
from retrieval.harness import evaluate, load_qa
from retrieval.retriever import open_retriever

# "tfidf" is the yardstick (retrieval.baseline), not a retriever mode.
MODES = ("hybrid", "dense", "bm25", "tfidf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", help="knowledge-base folder (default: the configured one)")
    parser.add_argument("--qa", required=True, action="append", help="QA JSONL file (repeatable)")
    parser.add_argument("--k", type=int, default=10, help="largest k reported (hit@k)")
    parser.add_argument("--modes", default="hybrid,dense,bm25", help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--show-misses", action="store_true", help="list questions whose first result is no hit")
    args = parser.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    settings = load_settings(args.config)
    try:
        retriever = open_retriever(settings, args.kb)
        items = [item for path in args.qa for item in load_qa(path)]
    except (KnowledgeBaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    ks = sorted({1, 3, 5, args.k})
    rows = {}
    print(f"{'mode':<8} {'n':>4} " + " ".join(f"{'hit@' + str(k):>7}" for k in ks) + f" {'mrr@10':>7} {'ms/q':>6}")
    for mode in modes:
        search = lambda q, k, mode=mode: retriever.search(q, k, mode=mode)  # noqa: E731
        if mode == "tfidf":
            search = TfidfBaseline(retriever.kb).search  # built before the clock starts, as the retriever's index
        start = time.perf_counter()
        metrics = evaluate(search, items, ks)
        ms = (time.perf_counter() - start) * 1000 / max(metrics.n, 1)
        row = metrics.as_dict()
        rows[mode] = row
        print(f"{mode:<8} {metrics.n:>4} " + " ".join(f"{row[f'hit@{k}']:>7.3f}" for k in ks)
              + f" {row['mrr@10']:>7.3f} {ms:>6.1f}")
        if args.show_misses:
            for miss in metrics.misses:
                print(f"    miss: {miss}")
    print(json.dumps({**rows[modes[0]], "mode": modes[0], "modes": rows}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
