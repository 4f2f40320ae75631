"""LLM serving costs on this machine: load time, peak RSS, time to first token and decode speed.

    .venv/bin/python bench/bench_llm.py [--modes nf4,nf4-bnb,bf16,int8,fp16,fp32] [--new-tokens 48] [--fresh-convert]
                                        [--generation app,transformers]

``nf4-bnb`` is NF4 through bitsandbytes' own CPU layers instead of our kernel (``engine/csrc/nf4_kernel.c``). Each mode
runs in its own subprocess (so peak RSS is its own); ratios are against the first mode. ``bf16`` is
left out, with a message, on CPUs without AVX512-BF16 (torch emulates it there, far too slowly to time).
The prompt is the real grounded prompt for a question, with retrieved passages from ../shared/eval/docs filling
about 850 tokens. ``app`` generation is the answer stage's own (``Answerer.generate``: engine.decoding's loop over
engine.forward, repetition penalty and first-token ban); ``--generation transformers`` runs the same settings
through ``model.generate`` with its own cache, processors and streamer, as a baseline. "TTFT" is for a prompt
with nothing cached, "TTFT next" for the next question's prompt, which shares its opening (system prompt and
chat template) with the one before. ``--fresh-convert`` also times the one-off conversion of the PyPI GGUF parts
into a throw-away cache.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EVAL = ROOT.parent / "shared" / "eval"
QUESTION = "政府采购的供应商应当具备哪些条件？"


def passages_for_prompt(tokenizer, target_tokens: int = 850, start: int = 0):
    """Real chunks of the procurement law from character ``start`` on, as hits, until the prompt holds about
    ``target_tokens``."""
    import pymupdf

    from kbcore.types import Chunk, Hit
    from llm.prompts import build_messages, render_prompt

    question = QUESTION
    hits = []
    with pymupdf.open(EVAL / "docs" / "zhengfu-caigou-fa.pdf") as doc:
        text = "".join(page.get_text() for page in doc).replace("\n", "")
    for i in range(start, len(text), 300):
        hits.append(Hit(Chunk(i, 1, "zhengfu-caigou-fa.pdf", i, 1, 1, "政府采购法", text[i:i + 300]), 1.0))
        prompt = render_prompt(tokenizer, build_messages(question, hits))
        if len(tokenizer(prompt)["input_ids"]) >= target_tokens:
            break
    return prompt


def transformers_generate(loaded, prompt: str, options):
    """The baseline: ``model.generate`` with transformers' own cache, processors and streamer, started on the
    model's thread; returns the streamer to read and the running generation."""
    from transformers import TextIteratorStreamer

    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.model.device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    running = loaded.submit(
        loaded.model.generate, **inputs, streamer=streamer, max_new_tokens=options.max_new_tokens,
        min_new_tokens=options.min_new_tokens, repetition_penalty=options.repetition_penalty,
        begin_suppress_tokens=list(options.banned_first), do_sample=False, temperature=None, top_p=None,
        top_k=None, pad_token_id=loaded.tokenizer.eos_token_id)
    return streamer, running


def run_one(mode: str, new_tokens: int, generation: str) -> dict:
    from dataclasses import replace

    import torch

    from kbcore.config import load_settings
    from kbcore.embedding import load_embedder
    from engine.generate import stream_from_compute_thread
    from llm.answerer import Answerer
    from engine.models import load_model

    quantization, _, variant = mode.partition("-")
    # "nf4-bnb": NF4 through bitsandbytes' own CPU layers instead of engine/csrc/nf4_kernel.c, as a baseline.
    settings = load_settings().with_overrides(llm={"quantization": quantization, "nf4_kernel": variant != "bnb"})
    start = time.perf_counter()
    loaded = load_model(settings.llm, settings.cache_dir)
    load_s = time.perf_counter() - start
    embedder = load_embedder(settings.embedding, settings.cache_dir)
    answerer = Answerer(settings, retriever=None, loaded=loaded)
    options = replace(answerer.decode_options(), max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    # Three prompts of the same question with different passages: a warm-up (one-off work such as 4-bit
    # repacking), one with nothing cached, and one that shares its opening (system prompt, chat template) with
    # the one before, as a chat's next question does.
    prompts = [passages_for_prompt(loaded.tokenizer, start=s) for s in (6000, 0, 3000)]
    prompt_tokens = len(loaded.tokenizer(prompts[1])["input_ids"])
    results = []
    for run, text in enumerate(prompts):
        if run == 1:
            loaded.prompt_cache = None
        embedder.embed_query(QUESTION)  # retrieval embeds the question first, on the caller's thread
        t0 = time.perf_counter()
        running = None
        if generation == "transformers":
            pieces, running = transformers_generate(loaded, text, options)
        else:
            pieces = stream_from_compute_thread(loaded, lambda: answerer.generate(text, options))
        first = None
        for piece in pieces:
            if first is None and piece:
                first = time.perf_counter()
        if running is not None:
            running.result()
        end = time.perf_counter()
        results.append((first - t0, (new_tokens - 1) / (end - first)))
    ttft, tok_s = results[1]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "generation": generation, "load_s": round(load_s, 1), "prompt_tokens": prompt_tokens,
            "ttft_s": round(ttft, 2),
            "decode_tok_s": round(tok_s, 2), "first_run_ttft_s": round(results[0][0], 2),
            "ttft_opening_cached_s": round(results[2][0], 2),
            "peak_rss_mib": round(rss_mib), "threads": torch.get_num_threads()}


def native_bf16() -> bool:
    import torch

    from engine.models import cpu_has_native_bf16

    return torch.cuda.is_available() or cpu_has_native_bf16()


def time_conversion() -> float:
    from kbcore.config import load_settings
    from engine.models import resolve_model_dir

    settings = load_settings()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        resolve_model_dir(settings.llm, Path(cache))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="nf4,bf16,int8,fp16,fp32")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--generation", default="app", help="app, transformers or both (comma-separated)")
    parser.add_argument("--fresh-convert", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-generation", default="app", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.new_tokens, args.one_generation)))
        return
    if args.fresh_convert:
        print(f"first-run conversion of the PyPI GGUF parts: {time_conversion():.1f} s")
    modes = args.modes.split(",")
    if "bf16" in modes and not native_bf16():
        modes.remove("bf16")
        print("bf16 skipped: this CPU has no AVX512-BF16 and no GPU is present, so torch emulates bf16 and a "
              "952-token prefill takes tens of minutes (pass --modes to force it)")
    rows = []
    for mode in modes:
        for generation in args.generation.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--new-tokens", str(args.new_tokens),
                                  "--one-generation", generation], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{mode} with {generation} generation failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'mode':<6} {'generation':<12} {'load s':>7} {'RSS MiB':>8} {'prompt tok':>10} {'TTFT s':>7} "
          f"{'TTFT next s':>11} {'decode tok/s':>12} {'TTFT vs first':>13} {'decode vs first':>15}")
    for r in rows:
        print(f"{r['mode']:<6} {r['generation']:<12} {r['load_s']:>7} {r['peak_rss_mib']:>8} {r['prompt_tokens']:>10} "
              f"{r['ttft_s']:>7} {r['ttft_opening_cached_s']:>11} {r['decode_tok_s']:>12} "
              f"{r['ttft_s'] / base['ttft_s']:>12.2f}x "
              f"{r['decode_tok_s'] / base['decode_tok_s']:>14.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
