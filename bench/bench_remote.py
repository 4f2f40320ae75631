"""What the openai backends cost over the local ones, on one machine: ``python -m app.api`` in a subprocess on
loopback is the server, this process the client.

    .venv/bin/python bench/bench_remote.py [--questions 8] [--chunks 256] [--max-tokens 64]

- Embeddings: the chunks of the sample PDFs, embedded here and through ``/v1/embeddings`` (batches of
  ``embedding.batch_size``), twice each, interleaved: chunks/s each, and the smallest cosine between the two.
- Answers: questions of ../shared/eval/qa/regulations.jsonl on the samples, answered here and with
  ``llm.backend = "openai"`` against the server (greedy, the same settings), alternating per question: p50/p95
  seconds, and how many answers are the same text with the same citations.

Loopback and one CPU for both sides: the figures are the HTTP, JSON and thread-hop overhead of the remote path,
and its agreement; not what a GPU server would give. Prints the CPU flags, a table, and last one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import cpu_flags  # noqa: E402

QA = ROOT.parent / "shared" / "eval" / "qa" / "regulations.jsonl"
KEY = "bench-remote-key"




def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import httpx
    import numpy as np

    from ingest import ingest_folder
    from kbcore.config import load_settings
    from kbcore.embedding import load_embedder
    from kbcore.store import KnowledgeBase
    from llm.answerer import Answerer
    from retrieval import open_retriever

    print(cpu_flags(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    config = work / "kbchat.toml"
    config.write_text("", encoding="utf-8")
    env = {"KBCHAT_CONFIG": str(config), "KBCHAT_KB_ROOT": str(work / "kb"),
           "KBCHAT_LLM__MAX_NEW_TOKENS": str(args.max_tokens), "KBCHAT_LLM__TEMPERATURE": "0"}
    settings = load_settings(env=env, use_default_file=False)
    kb_path = work / "kb" / "samples"
    ingest_folder(ROOT / "samples", settings, kb_path=kb_path)
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        held = {d.source for d in kb.documents()}
        chunks = [c.text for d in sorted(held) for c in kb.chunks(d)][: args.chunks]
    finally:
        kb.close()
    questions = [q for q in map(json.loads, QA.read_text(encoding="utf-8").splitlines())
                 if set(q.get("sources") or [q.get("source")]) & held][: args.questions]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("KBCHAT_")} | env | {
        "KBCHAT_API__API_KEYS": KEY}
    server = subprocess.Popen([sys.executable, "-m", "app.api", "--port", str(port)], cwd=ROOT, env=child_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:  # the server preloads its model: wait until it says it is ready
            try:
                if httpx.get(f"{url}/health", timeout=2).json()["ready"]:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.5)
        remote = settings.with_overrides(
            llm={"backend": "openai", "base_url": f"{url}/v1", "api_key": KEY},
            embedding={"backend": "openai", "base_url": f"{url}/v1", "api_key": KEY})

        local_embedder = load_embedder(settings.embedding, settings.cache_dir)
        remote_embedder = load_embedder(remote.embedding, remote.cache_dir)
        local_embedder.embed_passages(chunks[:8]), remote_embedder.embed_passages(chunks[:8])  # warm both
        # Interleaved (local, openai, openai, local), so a busy shared machine's drift weighs on both alike.
        seconds, vectors = {"local": 0.0, "openai": 0.0}, {}
        for name in ("local", "openai", "openai", "local"):
            start = time.perf_counter()
            vectors[name] = (local_embedder if name == "local" else remote_embedder).embed_passages(chunks)
            seconds[name] += time.perf_counter() - start
        rows = {name: {"embed_chunks_per_s": 2 * len(chunks) / seconds[name]} for name in seconds}
        cosines = np.sum(vectors["local"] * vectors["openai"], axis=1)

        retriever = open_retriever(settings, kb_path)
        answerers = {"local": Answerer(settings, retriever), "openai": Answerer(remote, retriever)}
        for answerer in answerers.values():
            answerer.answer(questions[0]["question"])  # warm: the model (local) or the connection (remote)
        answers, times = {"local": [], "openai": []}, {"local": [], "openai": []}
        for i, q in enumerate(questions):  # each question on both, in alternating order
            for name in (("local", "openai") if i % 2 == 0 else ("openai", "local")):
                start = time.perf_counter()
                answers[name].append(answerers[name].answer(q["question"]))
                times[name].append(time.perf_counter() - start)
        for name in rows:
            rows[name] |= {"answer_p50_s": percentile(times[name], 50), "answer_p95_s": percentile(times[name], 95)}
        same = sum((a.text, a.citations) == (b.text, b.citations) for a, b in zip(answers["local"], answers["openai"]))
    finally:
        server.terminate()
        server.wait(30)

    print(f"{len(chunks)} chunks, {len(questions)} questions, max_new_tokens {args.max_tokens}")
    print(f"{'backend':8} {'embed chunks/s':>15} {'answer p50 s':>13} {'answer p95 s':>13}")
    for name, row in rows.items():
        print(f"{name:8} {row['embed_chunks_per_s']:15.1f} {row['answer_p50_s']:13.2f} {row['answer_p95_s']:13.2f}")
    print(f"min cosine openai vs local: {cosines.min():.6f}; answers identical (text and citations): "
          f"{same}/{len(questions)}")
    print(json.dumps({"cpu": cpu_flags(), "chunks": len(chunks), "questions": len(questions), **rows,
                      "min_cosine": float(cosines.min()), "same_answers": same}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
