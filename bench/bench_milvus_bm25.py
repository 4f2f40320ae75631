"""Does Milvus's own full-text search (BM25) serve Chinese retrieval as well as ours? Keyword-only hit@k on the
development questions, for: our BM25 (retrieval.lexical, what both vector backends use), Milvus Lite's BM25 with
its jieba analyzer over the same passage text, and Milvus Lite's BM25 over our own search tokens (its standard
analyzer over our space-separated tokens, questions tokenised as ours are, so only the BM25 engine differs).

    .venv/bin/python bench/bench_milvus_bm25.py --kb KB      # KB: python -m ingest ../shared/eval/docs --kb KB

Prints a table and a JSON last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kbcore.config import load_settings  # noqa: E402
from kbcore.store import KnowledgeBase  # noqa: E402
from kbcore.text import openings, passage_text, search_tokens, stored_opening_chars  # noqa: E402
from kbcore.types import Hit  # noqa: E402
from retrieval import evaluate, load_qa, open_retriever  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"


def milvus_bm25(client, name: str, rows: list[dict], analyzer: dict) -> None:
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=65_535, enable_analyzer=True, analyzer_params=analyzer)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    params = client.prepare_index_params()
    params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    params.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
    for start in range(0, len(rows), 2000):
        client.insert(name, [{**r, "unused": [0.0, 0.0]} for r in rows[start:start + 2000]])
    client.flush(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kb", required=True)
    args = parser.parse_args()
    settings = load_settings()
    kb = KnowledgeBase(args.kb, readonly=True)
    chunks = kb.chunks()
    chars = stored_opening_chars(kb.settings()) or 0
    texts = {c.id: passage_text(c.heading, c.text, o) for c, o in zip(chunks, openings(chunks, chars))}
    ids, tokens = kb.search_tokens()
    by_id = {c.id: c for c in chunks}
    retriever = open_retriever(settings, args.kb)

    from pymilvus import MilvusClient

    tmp = tempfile.mkdtemp()
    client = MilvusClient(str(Path(tmp) / "bm25.db"))
    milvus_bm25(client, "jieba", [{"id": int(i), "text": texts[int(i)]} for i in ids], {"tokenizer": "jieba"})
    milvus_bm25(client, "ours", [{"id": int(i), "text": t} for i, t in zip(ids, tokens)], {"tokenizer": "standard"})

    def milvus_search(collection, pretokenise=False):
        def search(question: str, k: int) -> list[Hit]:
            query = " ".join(search_tokens(question)) if pretokenise else question
            if not query.strip():
                return []
            found = client.search(collection, data=[query], anns_field="sparse", limit=k, output_fields=[])
            return [Hit(chunk=by_id[h["id"]], score=float(h["distance"])) for h in found[0]]
        return search

    engines = {"ours (retrieval.lexical)": lambda q, k: retriever.search(q, k, mode="bm25"),
               "milvus lite, jieba analyzer": milvus_search("jieba"),
               "milvus lite, our tokens": milvus_search("ours", pretokenise=True)}
    rows = []
    print(f"{'set':<12} | {'engine':<28} | hit@1 | hit@5 | mrr@10")
    for qa in sorted((EVAL / "qa").glob("*.jsonl")):
        items = load_qa(qa)
        for name, search in engines.items():
            m = evaluate(search, items).as_dict()
            rows.append({"set": qa.stem, "engine": name, **{k: m[k] for k in ("hit@1", "hit@5", "mrr@10", "n")}})
            print(f"{qa.stem:<12} | {name:<28} | {m['hit@1']:.3f} | {m['hit@5']:.3f} | {m['mrr@10']:.3f}", flush=True)
    print(json.dumps({"kb": str(args.kb), "chunks": len(ids), "rows": rows}, ensure_ascii=False))


if __name__ == "__main__":
    main()
