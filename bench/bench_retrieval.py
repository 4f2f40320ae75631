"""Query latency of hybrid retrieval at 1k, 10k and 100k chunks, split into its stages.

    .venv/bin/python bench/bench_retrieval.py [--sizes 1000,10000,100000] [--queries 50]

Chunk text for size is synthetic: token sequences resampled from the real chunks of ../shared/eval/docs, with
random unit vectors (embedding 100k real chunks would take hours here). Queries are the real questions of
../shared/eval/qa, embedded by the configured embedder. Prints p50/p95 in milliseconds per stage; "fuse" is the
configured fusion, fetching the hits and widening short ones with their neighbours.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kbcore.config import load_settings  # noqa: E402
from kbcore.embedding import load_embedder  # noqa: E402
from kbcore.store import KnowledgeBase, NewChunk  # noqa: E402
from kbcore.text import search_tokens  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"


def corpus_tokens(limit_pages: int = 200) -> list[list[str]]:
    import pymupdf as fitz

    pieces = []
    for pdf in sorted((EVAL / "docs").glob("*.pdf")):
        with fitz.open(pdf) as doc:
            for page in doc:
                text = page.get_text().replace("\n", "")
                pieces += [search_tokens(text[i:i + 300]) for i in range(0, len(text), 300)]
        if len(pieces) > limit_pages * 6:
            break
    return [p for p in pieces if p]


def build_kb(path: Path, size: int, dim: int, model_id: str, pieces: list[list[str]], rng) -> KnowledgeBase:
    kb = KnowledgeBase.create(path, embedding_model=model_id, dimension=dim)
    per_doc = 1000
    with kb.writer() as writer:
        for d in range(0, size, per_doc):
            n = min(per_doc, size - d)
            chunks = []
            for i in range(n):
                tokens = pieces[rng.integers(len(pieces))]
                tokens = [tokens[j] for j in rng.integers(0, len(tokens), size=len(tokens))]
                chunks.append(NewChunk(ordinal=i, page_start=i // 5 + 1, page_end=i // 5 + 1, heading="",
                                       text="".join(tokens), tokens=" ".join(tokens)))
            vecs = rng.standard_normal((n, dim)).astype("float32")
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            writer.put_document(f"synthetic-{d // per_doc:04d}.pdf", content_hash=str(d), title="", pages=200,
                                chunks=chunks, vectors=vecs)
    return kb


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    settings = load_settings()
    embedder = load_embedder(settings.embedding, settings.cache_dir)
    questions = [json.loads(line)["question"] for f in sorted((EVAL / "qa").glob("*.jsonl"))
                 for line in open(f, encoding="utf-8")][: args.queries]
    pieces = corpus_tokens()
    rng = np.random.default_rng(0)
    cfg = settings.retrieval
    print(f"{'chunks':>7} | {'embed p50':>9} {'p95':>6} | {'dense p50':>9} {'p95':>6} | {'bm25 p50':>8} {'p95':>6} | "
          f"{'fuse p50':>8} {'p95':>6} | {'total p50':>9} {'p95':>6} | build s")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            kb = build_kb(Path(tmp) / "kb", size, embedder.dimension, embedder.model_id, pieces, rng)
            retriever = Retriever(kb, embedder, cfg)
            retriever.search(questions[0], 5)  # builds the BM25 matrix and loads the index once
            build = time.perf_counter() - start
            stages: dict[str, list[float]] = {"embed": [], "dense": [], "bm25": [], "fuse": [], "total": []}
            for q in questions:
                t0 = time.perf_counter()
                qv = embedder.embed_query(q)
                t1 = time.perf_counter()
                dense = kb.dense_search(qv, cfg.candidates)
                t2 = time.perf_counter()
                lexical = retriever._lexical_index().search(search_tokens(q), cfg.candidates)
                t3 = time.perf_counter()
                ranked = retriever.fuse(dense, lexical)
                hits = retriever._to_hits(ranked[: cfg.top_k], qv, dict(dense), dict(lexical))
                [retriever.widened(h) for h in hits]
                t4 = time.perf_counter()
                retriever.search(q, cfg.top_k)
                t5 = time.perf_counter()
                for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    stages[name].append(value * 1000)
            cells = " | ".join(f"{p50:>9.1f} {p95:>6.1f}" if name in ("embed", "dense", "total") else
                               f"{p50:>8.1f} {p95:>6.1f}"
                               for name, (p50, p95) in ((n, percentiles(v)) for n, v in stages.items()))
            print(f"{size:>7} | {cells} | {build:.1f}")
            kb.close()


if __name__ == "__main__":
    main()
