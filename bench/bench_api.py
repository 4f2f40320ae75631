"""The HTTP API under load: 1, 4 and 16 concurrent streaming clients against one server on loopback.

    .venv/bin/python bench/bench_api.py [--clients 1,4,16] [--requests 16] [--max-tokens 64] [--kb KB]

Builds a knowledge base from samples/ (or uses --kb), asks questions of ../shared/eval/qa/regulations.jsonl whose
documents it holds, first in this process through ``app.service.answerer`` (the in-process ``Answerer``, one at a
time: the baseline, run again at the end), then through ``python -m app.api`` in a subprocess with the official
``openai`` client, ``--requests`` questions per level spread over the clients. TTFT is the first content piece;
total is the whole answer (the stream's end); tokens/s is all completion tokens of a level over its wall time.
Errors count refused (4xx), failed (5xx) and lost (no answer, no error) requests. Prints a table and, last, one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
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
KEY = "bench-key"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]




def questions(kb_path: Path, count: int) -> list[str]:
    from app import state

    sources = {d["source"] for d in state.kb_documents(kb_path)}
    items = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines() if line.strip()]
    asked = [i["question"] for i in items if i.get("source") in sources and i.get("pages")]
    if not asked:
        raise SystemExit(f"no question of {QA} is about a document in {kb_path}")
    return [asked[i % len(asked)] for i in range(count)]


def row(name: str, clients: int, ttft: list[float], total: list[float], tokens: int, wall: float,
        errors: dict) -> dict:
    return {"run": name, "clients": clients, "requests": len(total) + sum(errors.values()),
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "total_p50": percentile(total, 50), "total_p95": percentile(total, 95),
            "tokens_per_s": tokens / wall if wall else 0.0, "completion_tokens": tokens, "wall_s": wall, **errors}


def baseline(settings, kb_path: Path, asked: list[str]) -> dict:
    """The in-process Answerer, one question after another: what the API adds to it is the difference."""
    from app import service

    answerer = service.answerer(settings, kb_path)
    answerer.answer(asked[0])  # warm: model, embedder, prompt cache
    tokenizer = answerer.loaded.tokenizer
    ttft, total, tokens = [], [], 0
    began = time.perf_counter()
    for question in asked:
        start = time.perf_counter()
        stream, first, draft = answerer.stream(question), None, []
        for piece in stream:
            first = first or time.perf_counter() - start
            draft.append(piece)
        total.append(time.perf_counter() - start)
        ttft.append(first if first is not None else total[-1])
        tokens += len(tokenizer("".join(draft), add_special_tokens=False)["input_ids"]) if stream.prepared.prompt else 0
    return row("in-process Answerer", 1, ttft, total, tokens, time.perf_counter() - began,
               {"refused": 0, "failed": 0, "lost": 0})


async def load(url: str, model: str, asked: list[str], clients: int, max_tokens: int) -> dict:
    import openai

    ai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=900)
    ttft, total, tokens = [], [], 0
    errors = {"refused": 0, "failed": 0, "lost": 0}
    todo = list(asked)

    async def one(question: str):
        nonlocal tokens
        start = time.perf_counter()
        first, usage, finished = None, None, False
        try:
            stream = await ai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], stream=True, max_tokens=max_tokens,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - start
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
                if chunk.usage:
                    usage = chunk.usage
        except openai.APIStatusError as exc:
            errors["failed" if exc.status_code >= 500 else "refused"] += 1
            return
        except openai.APIError:
            errors["failed"] += 1
            return
        if not finished or usage is None:
            errors["lost"] += 1
            return
        total.append(time.perf_counter() - start)
        ttft.append(first if first is not None else total[-1])
        tokens += usage.completion_tokens

    async def client():
        while todo:
            await one(todo.pop(0))

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - began
    await ai.close()
    return row("API, streaming", clients, ttft, total, tokens, wall, errors)


def start_server(env: dict, port: int) -> subprocess.Popen:
    import httpx

    server = subprocess.Popen([sys.executable, "-m", "app.api", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["ready"]:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not become ready: {server.stderr.read() if server.stderr else ''}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=16, help="questions per level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kb", type=Path, help="an existing knowledge base (default: samples/ ingested afresh)")
    args = parser.parse_args()

    from app import state
    from kbcore.config import load_settings

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    if args.kb:
        kb_root, kb = args.kb.resolve().parent, args.kb.name
    else:
        kb_root, kb = work / "kb", "samples"
    # The server and the baseline read the same settings: kbchat.toml and KBCHAT_* as given, these on top.
    env = dict(os.environ) | {"KBCHAT_KB_ROOT": str(kb_root), "KBCHAT_LLM__MAX_NEW_TOKENS": str(args.max_tokens),
            "KBCHAT_API__API_KEYS": KEY, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    settings = load_settings(env=env)
    if not args.kb:
        from ingest import ingest_folder

        state.create_kb_folder(kb_root, kb)
        ingest_folder(ROOT / "samples", settings, kb_path=kb_root / kb)
    asked = questions(kb_root / kb, args.requests)

    rows = [baseline(settings, kb_root / kb, asked)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load(url, kb, asked[:2], 1, args.max_tokens))  # warm the server's prompt cache
        for clients in map(int, args.clients.split(",")):
            rows.append(asyncio.run(load(url, kb, asked, clients, args.max_tokens)))
    finally:
        server.terminate()
        server.wait(30)
    # Again after the server: a shared machine drifts, and the two baselines show how far during this run.
    rows.append({**baseline(settings, kb_root / kb, asked), "run": "in-process, again"})

    print(f"CPU: {cpu_flags()}; model {settings.llm.model} ({settings.llm.quantization}), max_tokens "
          f"{args.max_tokens}, {args.requests} questions per level")
    print(f"{'run':22s} {'clients':>7s} {'TTFT p50':>9s} {'p95':>7s} {'total p50':>10s} {'p95':>7s} "
          f"{'tok/s':>7s} {'errors':>7s}")
    for r in rows:
        errors = r["refused"] + r["failed"] + r["lost"]
        print(f"{r['run']:22s} {r['clients']:7d} {r['ttft_p50']:8.2f}s {r['ttft_p95']:6.2f}s {r['total_p50']:9.2f}s "
              f"{r['total_p95']:6.2f}s {r['tokens_per_s']:7.1f} {errors:7d}")
    print(json.dumps({"cpu": cpu_flags(), "max_tokens": args.max_tokens, "rows": rows}, ensure_ascii=False))


if __name__ == "__main__":
    main()
