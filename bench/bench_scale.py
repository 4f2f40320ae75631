"""The vector index as a knowledge base grows: flat (exact), the automatic index ([store] index = "auto") and
Milvus Lite, each over the same stored chunks, in one run; and how big BM25's sparse matrix gets.

    .venv/bin/python bench/bench_scale.py [--sizes 10000,100000,1000000] [--backends flat,auto,milvus]
                                          [--milvus-max 100000] [--bm25-max 100000] [--spread 1.0] [--bm25-only]

Data. Chunk text is real: 300-character pieces of ../shared/eval/docs, each stored many times with a variant
number appended, and its BM25 tokens resampled (as bench_retrieval.py does). Vectors are synthetic but
embedding-like: each is a real multilingual-e5-small passage vector of one of the pieces (from a knowledge base
built from ../shared/eval/docs, --base-kb) plus noise drawn from the real vectors' own spread (a random
combination of 64 centred real vectors, scaled by --spread), normalised. Their cosines to each other and to real
questions match the real corpus's (printed). Queries are the real questions of ../shared/eval/qa, embedded by
the configured embedder. Recall@10 is against the flat index's answer (exact inner product).

Per size and index: build time (from kb.sqlite to a searchable index, the index file written), memory (the
index's own estimate for FAISS; the process's resident memory growth for every index, Milvus Lite included as it
runs inside this process), query p50/p95 of dense_search at the retriever's depth (50 candidates, one thread),
and recall@10. BM25: its build from kb.sqlite (time, peak memory), then a retriever's index kept up through a
write of 1,000 chunks and a replaced document of 1,000, against a fresh retriever's full build; query p50/p95 of
the BM25 search alone (the real questions, tokenised as the retriever does) on the fresh build and on the kept-up
index (segments and masked rows). The last line is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import cpu_flags  # noqa: E402

from kbcore.config import StoreSettings, load_settings  # noqa: E402
from kbcore.store import KnowledgeBase, NewChunk  # noqa: E402
from kbcore.text import search_tokens  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
PER_DOC = 1000




def rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def base_kb_path(given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(load_settings().cache_dir.glob("test-kb/*/kb.sqlite"))
    if not found:
        sys.exit("no knowledge base of ../shared/eval/docs found: build one (python -m ingest ../shared/eval/docs "
                 "--kb KB) and pass --base-kb KB")
    return found[-1].parent


class Corpus:
    """Real chunk text and vectors, and embedding-like variations of them."""

    def __init__(self, kb_path: Path, spread: float, seed: int = 0):
        kb = KnowledgeBase(kb_path, readonly=True)
        chunks = kb.chunks()
        by_id = {c.id: c for c in chunks}
        ids, self.vectors = kb.vectors()
        self.texts = [by_id[int(i)].text for i in ids]
        self.tokens = [search_tokens(t) or ["空"] for t in self.texts]
        self.model, self.dimension = kb.embedding_model, kb.dimension
        kb.close()
        self.centred = self.vectors - self.vectors.mean(0)
        self.spread = spread
        self.rng = np.random.default_rng(seed)

    def vectors_like(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        base = self.rng.integers(len(self.vectors), size=n)
        mix = self.rng.standard_normal((n, 64)).astype(np.float32) / 8.0
        noise = mix @ self.centred[self.rng.integers(len(self.vectors), size=64)]
        v = self.vectors[base] + self.spread * noise
        return base, (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def chunks_like(self, base: np.ndarray, start: int) -> list[NewChunk]:
        out = []
        for i, b in enumerate(base):
            tokens = self.tokens[b]
            tokens = [tokens[j] for j in self.rng.integers(0, len(tokens), size=len(tokens))] + [f"v{start + i}"]
            out.append(NewChunk(ordinal=i, page_start=i // 5 + 1, page_end=i // 5 + 1, heading="",
                                text=f"{self.texts[b]}（{start + i}）", tokens=" ".join(tokens)))
        return out


def build_kb(path: Path, size: int, corpus: Corpus) -> float:
    """kb.sqlite with ``size`` chunks; no vector index is built here (it is read back per index below)."""
    kb = KnowledgeBase.create(path, embedding_model=corpus.model, dimension=corpus.dimension,
                              store=StoreSettings(index="flat"))
    began = time.perf_counter()
    with kb.writer() as writer:
        kb._index.refresh = lambda kb: None  # the benchmark times each index's build from the database below
        for d in range(0, size, PER_DOC):
            n = min(PER_DOC, size - d)
            base, vecs = corpus.vectors_like(n)
            writer.put_document(f"doc-{d // PER_DOC:05d}.pdf", content_hash=str(d), title="", pages=200,
                                chunks=corpus.chunks_like(base, d), vectors=vecs)
    kb.close()
    return time.perf_counter() - began


def wait_for_milvus_index(kb: KnowledgeBase, timeout: float = 3600) -> None:
    """Milvus Lite merges the small segments each flush writes and indexes the merged ones on a background thread,
    and searches many small segments slowly meanwhile (100 ms a query at 20k rows, 20 ms once merged): the build
    time counts until that work is done. It has no public call for this; its in-process engine is asked."""
    from milvus_lite.server_manager import server_manager_instance

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = kb._index.client.describe_index(kb._index.name, "vector")
        if info.get("state") == "Finished" and not info.get("pending_index_rows"):
            break
        time.sleep(0.5)
    for _, db, _ in list(server_manager_instance._servers.values()):
        if db.has_collection(kb._index.name):
            db.get_collection(kb._index.name)._wait_for_bg(timeout=max(1.0, deadline - time.monotonic()))


def measure(path: Path, store: StoreSettings, queries: np.ndarray, exact: list[list[int]] | None, depth: int):
    gc.collect()
    before = rss()
    reset_peak()
    began = time.perf_counter()
    kb = KnowledgeBase(path, store=store)
    kb.dense_search(queries[0], 1)  # builds (or loads) the index
    if store.backend == "milvus":
        wait_for_milvus_index(kb)
    build = time.perf_counter() - began
    info = kb.index_info()
    grown, peak = rss() - before, peak_rss() - before
    times, top10 = [], []
    for q in queries:
        t0 = time.perf_counter()
        kb.dense_search(q, depth)
        times.append((time.perf_counter() - t0) * 1000)
        top10.append([i for i, _ in kb.dense_search(q, 10)])
    recall = None if exact is None else float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10, exact)]))
    row = {"index": info["kind"], "build_s": round(build, 1),
           "index_mb": round(info["memory_bytes"] / 2**20, 1) if info["memory_bytes"] else None,
           "rss_growth_mb": round(grown / 2**20, 1), "build_peak_mb": round(peak / 2**20, 1),
           "p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
           "recall_at_10": None if recall is None else round(recall, 4)}
    kb.close()
    del kb
    return row, top10


def bm25_query_ms(index, queries: list[list[str]], depth: int, passes: int = 3) -> tuple[float, float]:
    """p50 and p95 of ``index.search`` over these tokenised questions (``passes`` times each, after one warm-up)."""
    for q in queries[:5]:
        index.search(q, depth)
    times = []
    for _ in range(passes):
        for q in queries:
            t0 = time.perf_counter()
            index.search(q, depth)
            times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.percentile(times, 50)), 3), round(float(np.percentile(times, 95)), 3)


def measure_bm25(path: Path, corpus: Corpus, size: int, questions: list[str], depth: int, write: int = 1000) -> dict:
    """BM25 built from kb.sqlite (time, memory), then kept up by a retriever through a write of ``write`` chunks
    (a new document) and a replaced document (``write`` chunks out, ``write`` in), against building it again.
    Query latency (the search alone, at the retriever's depth) on the fresh build and on the kept-up index."""
    from types import SimpleNamespace

    from retrieval.lexical import BM25Index
    from retrieval.retriever import MAX_QUERY_CHARS, Retriever

    # Tokenised as Retriever.search does before it asks the index.
    queries = [search_tokens(q.strip()[:MAX_QUERY_CHARS]) for q in questions]

    kb = KnowledgeBase(path, readonly=True)
    gc.collect()
    before = rss()
    reset_peak()
    began = time.perf_counter()
    ids, tokens = kb.search_tokens()
    fetched = time.perf_counter() - began
    tokens_mb = (sum(map(sys.getsizeof, tokens)) + sys.getsizeof(tokens)) / 2**20
    index = BM25Index.build(ids, tokens)
    seconds = time.perf_counter() - began
    nnz, terms = index.nonzeros, len(index.vocabulary)
    row = {"bm25_build_s": round(seconds, 1), "bm25_fetch_s": round(fetched, 1), "bm25_nonzeros": nnz,
           "bm25_terms": terms, "bm25_density": nnz / max(1, len(index) * terms),
           "bm25_matrix_mb": round(index.nbytes / 2**20, 1), "bm25_tokens_mb": round(tokens_mb, 1),
           "bm25_peak_mb": round((peak_rss() - before) / 2**20, 1)}
    row["bm25_query_p50_ms"], row["bm25_query_p95_ms"] = bm25_query_ms(index, queries, depth)
    del index, tokens, ids
    kb.close()

    kb = KnowledgeBase(path, store=StoreSettings(index="flat"))
    embedder = SimpleNamespace(model_id=kb.embedding_model, dimension=kb.dimension)
    retrieval = load_settings().retrieval
    retriever = Retriever(kb, embedder, retrieval)
    retriever._lexical_index()
    for label, source, first in (("add", "added.pdf", size), ("replace", "doc-00000.pdf", size + write)):
        base, vecs = corpus.vectors_like(write)
        with kb.writer(catch_up_index=False) as writer:
            writer.put_document(source, content_hash=label, title="", pages=200,
                                chunks=corpus.chunks_like(base, first), vectors=vecs)
        read = retriever.lexical_tokens_read
        began = time.perf_counter()
        index = retriever._lexical_index()
        row[f"bm25_{label}_s"] = round(time.perf_counter() - began, 3)
        assert retriever.lexical_tokens_read - read == write, "the retriever rebuilt the index"
    row["bm25_segments"] = index.segments
    row["bm25_masked_rows"] = sum(s.dead for s in index._segments)
    row["bm25_written_query_p50_ms"], row["bm25_written_query_p95_ms"] = bm25_query_ms(index, queries, depth)
    began = time.perf_counter()
    fresh = Retriever(kb, embedder, retrieval)._lexical_index()
    row["bm25_rebuild_s"] = round(time.perf_counter() - began, 1)
    question = search_tokens("供应商参加政府采购活动应当具备哪些条件")
    assert index.search(question, 50) == fresh.search(question, 50)
    del index, fresh, retriever
    kb.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="flat,auto,milvus")
    parser.add_argument("--milvus-max", type=int, default=100_000, help="largest size Milvus Lite is built for")
    parser.add_argument("--bm25-max", type=int, default=100_000, help="largest size BM25 is built for")
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--base-kb", default=None)
    parser.add_argument("--workdir", default=None, help="where the knowledge bases are built (a few GB at 1M)")
    parser.add_argument("--bm25-only", action="store_true", help="measure BM25 alone (no vector index)")
    args = parser.parse_args()
    print("CPU:", cpu_flags(), "| Python", platform.python_version(), flush=True)
    settings = load_settings()
    corpus = Corpus(base_kb_path(args.base_kb), args.spread)
    if args.bm25_only:
        args.backends, args.milvus_max = "", 0
    from kbcore.embedding import load_embedder

    embedder = load_embedder(settings.embedding, settings.cache_dir)
    questions = [json.loads(line)["question"] for f in sorted((EVAL / "qa").glob("*.jsonl"))
                 for line in open(f, encoding="utf-8")][: args.queries]
    queries = np.stack([embedder.embed_query(q) for q in questions]).astype(np.float32)
    _, sample = corpus.vectors_like(2000)
    print(f"{len(corpus.vectors)} real vectors; mean cosine chunk-chunk real {np.mean(corpus.vectors[:700] @ corpus.vectors[700:1400].T):.3f} "
          f"synthetic {np.mean(sample[:1000] @ sample[1000:].T):.3f}; {len(queries)} real questions", flush=True)
    depth = settings.retrieval.candidates
    stores = {"flat": StoreSettings(index="flat"), "auto": StoreSettings(index="auto"),
              "milvus": StoreSettings(backend="milvus")}
    backends = [] if args.bm25_only else ["flat"] + [b for b in args.backends.split(",") if b and b != "flat"]
    rows = []
    header = (f"{'chunks':>8} | {'index':<12} | {'build s':>7} | {'index MB':>8} | {'RSS +MB':>7} | {'peak +MB':>8} | "
              f"{'p50 ms':>6} | {'p95 ms':>6} | recall@10")
    print(header, flush=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            path = Path(tmp) / "kb"
            insert = build_kb(path, size, corpus)
            print(f"{size:>8} | kb.sqlite written in {insert:.1f} s "
                  f"({(path / 'kb.sqlite').stat().st_size / 2**30:.2f} GiB)", flush=True)
            exact = None
            for name in backends:
                if name == "milvus" and size > args.milvus_max:
                    print(f"{size:>8} | {'milvus-lite':<12} | skipped (--milvus-max {args.milvus_max})", flush=True)
                    continue
                (path / "vectors.faiss").unlink(missing_ok=True)  # each index is built from kb.sqlite
                row, top10 = measure(path, stores[name], queries, exact, depth)
                if name == "flat":
                    exact = top10
                row = {"chunks": size, "setting": name, **row}
                rows.append(row)
                label = f"{name}:{row['index']}" if name != "milvus" else "milvus-lite"
                cell = lambda v, w, f="": f"{v:>{w}{f}}" if v is not None else f"{'-':>{w}}"  # noqa: E731
                print(f"{size:>8} | {label:<12} | {row['build_s']:>7.1f} | {cell(row['index_mb'], 8, '.1f')} | "
                      f"{row['rss_growth_mb']:>7.1f} | {row['build_peak_mb']:>8.1f} | {row['p50_ms']:>6.2f} | "
                      f"{row['p95_ms']:>6.2f} | {cell(row['recall_at_10'], 9, '.4f')}", flush=True)
            if "milvus" in backends and size <= args.milvus_max:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_all()  # before its folder is removed
            if size <= args.bm25_max:
                bm25 = {"chunks": size, "setting": "bm25", **measure_bm25(path, corpus, size, questions, depth)}
                rows.append(bm25)
                print(f"{size:>8} | bm25: {bm25['bm25_nonzeros']:,} non-zeros over {bm25['bm25_terms']:,} terms "
                      f"(density {bm25['bm25_density']:.2e}), counts {bm25['bm25_matrix_mb']} MB; build "
                      f"{bm25['bm25_build_s']} s ({bm25['bm25_fetch_s']} s reading tokens), peak "
                      f"+{bm25['bm25_peak_mb']} MB (token strings +{bm25['bm25_tokens_mb']} MB); retriever after "
                      f"a write of 1,000 chunks {bm25['bm25_add_s']} s, after replacing a document of 1,000 "
                      f"{bm25['bm25_replace_s']} s ({bm25['bm25_segments']} segments, "
                      f"{bm25['bm25_masked_rows']} rows masked), rebuilt {bm25['bm25_rebuild_s']} s; query p50 / p95 "
                      f"{bm25['bm25_query_p50_ms']} / {bm25['bm25_query_p95_ms']} ms fresh, "
                      f"{bm25['bm25_written_query_p50_ms']} / {bm25['bm25_written_query_p95_ms']} ms after the "
                      f"writes", flush=True)
    print(json.dumps({"cpu": cpu_flags(), "spread": args.spread, "queries": len(queries), "rows": rows},
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
