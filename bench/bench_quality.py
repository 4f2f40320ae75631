"""How far each CPU serving path's next-token distributions are from fp32's, on real grounded prompts.

    .venv/bin/python bench/bench_quality.py [--modes fp32,nf4,nf4-bnb,int8,bf16] [--prompts 5] [--decode-steps 16]
                                            [--kb PATH]

The prompts are the answer stage's own (``Answerer.prepare(question).prompt``) for the first ``--prompts``
questions of tests/data/answers/facts.jsonl over the knowledge base ``--kb`` (default: the test suite's cached
knowledge base of ../shared/eval/docs, under the model cache's ``test-kb``). For each mode, through the serving
forward (``engine.forward.model_forward``): the logits of the last prompt position (the prefill path, on the
prompt kernel for NF4), then ``--decode-steps`` decoding steps, teacher-forced with fp32's greedy continuation so
every mode sees the same tokens. Reported per mode and path: mean KL(fp32 || mode) of the next-token
distributions, top-1 agreement with fp32, and the largest absolute logit difference. ``nf4`` is NF4 on our
kernels (engine/csrc), ``nf4-bnb`` NF4 on bitsandbytes' own layers. One model is loaded at a time. ``bf16`` is
left out, with a message, on CPUs without AVX512-BF16 (torch emulates it there, far too slowly).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import cpu_flags  # noqa: E402
FACTS = ROOT / "tests" / "data" / "answers" / "facts.jsonl"


def default_kb(settings) -> Path | None:
    built = sorted((settings.cache_dir / "test-kb").glob("*/kb.sqlite"), key=lambda p: p.stat().st_mtime)
    return built[-1].parent if built else None


def real_prompts(settings, kb: Path, count: int) -> list[str]:
    """The answer stage's grounded prompts for the first ``count`` questions (with a prompt) of facts.jsonl."""
    from transformers import AutoTokenizer

    from engine.models import resolve_model_dir
    from llm.answerer import Answerer
    from retrieval import open_retriever

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(settings.llm, settings.cache_dir))
    answerer = Answerer(settings, open_retriever(settings, kb), loaded=SimpleNamespace(tokenizer=tokenizer))
    prompts = []
    for line in FACTS.read_text(encoding="utf-8").splitlines():
        if len(prompts) == count:
            break
        prompt = answerer.prepare(json.loads(line)["question"]).prompt
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def mode_settings(settings, mode: str):
    quantization, _, variant = mode.partition("-")
    return settings.with_overrides(llm={"quantization": quantization, "nf4_kernel": variant != "bnb"})


def mode_logits(loaded, prompt_ids: list[list[int]], continuations: list[list[int]] | None, steps: int):
    """Per prompt: the (1 + steps, vocab) float32 logits of the last prompt position and of each decoding step,
    fed ``continuations`` (or, with None, this model's own greedy tokens, returned as the continuations)."""
    import torch

    from engine.forward import model_forward

    def one(ids, forced):
        forward = model_forward(loaded, len(ids) + steps + 1)
        with torch.inference_mode():
            rows = [forward(torch.tensor([ids]))[0].float()]
            tokens = []
            for step in range(steps):
                token = forced[step] if forced is not None else int(rows[-1].argmax())
                tokens.append(token)
                rows.append(forward(torch.tensor([[token]]))[0].float())
        return torch.stack(rows), tokens

    out = [loaded.submit(one, ids, None if continuations is None else continuations[i]).result()
           for i, ids in enumerate(prompt_ids)]
    return [logits for logits, _ in out], [tokens for _, tokens in out]


def divergence(reference, got) -> dict:
    """KL(reference || got), top-1 agreement and max |logit difference| of (positions, vocab) logits."""
    import torch

    p = torch.log_softmax(reference.double(), -1)
    q = torch.log_softmax(got.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return {"kl": kl.mean().item(), "top1": (reference.argmax(-1) == got.argmax(-1)).double().mean().item(),
            "max_abs": (reference - got).abs().max().item(), "positions": reference.shape[0]}


def native_bf16() -> bool:
    import torch

    from engine.models import cpu_has_native_bf16

    return torch.cuda.is_available() or cpu_has_native_bf16()




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="fp32,nf4,nf4-bnb,int8,bf16")
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--kb", type=Path, help="knowledge base folder (default: the tests' cached eval KB)")
    args = parser.parse_args()

    import torch

    from kbcore import compute
    from kbcore.config import load_settings
    from engine.models import load_model

    settings = load_settings()
    kb = args.kb or default_kb(settings)
    if kb is None:
        sys.exit("no --kb given and no cached test knowledge base (run the slow tests once, or ingest "
                 "../shared/eval/docs and pass its folder)")
    modes = [m for m in args.modes.split(",") if m and m != "fp32"]
    if "bf16" in modes and not native_bf16():
        print("bf16 left out: this CPU has no AVX512-BF16 (torch would emulate it, far too slowly)", file=sys.stderr)
        modes.remove("bf16")

    prompts = real_prompts(settings, kb, args.prompts)
    reference_loaded = load_model(mode_settings(settings, "fp32").llm, settings.cache_dir, shared=False)
    prompt_ids = [reference_loaded.tokenizer(p)["input_ids"] for p in prompts]
    start = time.perf_counter()
    reference, continuations = mode_logits(reference_loaded, prompt_ids, None, args.decode_steps)
    print(f"fp32: {len(prompts)} prompts ({min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    del reference_loaded
    gc.collect()

    results = []
    for mode in modes:
        loaded = load_model(mode_settings(settings, mode).llm, settings.cache_dir, shared=False)
        start = time.perf_counter()
        got, _ = mode_logits(loaded, prompt_ids, continuations, args.decode_steps)
        seconds = time.perf_counter() - start
        served = loaded.quantization
        del loaded
        gc.collect()
        prefill = divergence(torch.stack([r[0] for r in reference]), torch.stack([g[0] for g in got]))
        decode = divergence(torch.cat([r[1:] for r in reference]), torch.cat([g[1:] for g in got]))
        results.append({"mode": mode, "served_as": served, "seconds": round(seconds, 1),
                        **{f"prefill_{k}": round(v, 4) for k, v in prefill.items()},
                        **{f"decode_{k}": round(v, 4) for k, v in decode.items()}})
        print(f"{mode}: {seconds:.1f} s", file=sys.stderr)

    print(f"\n{len(prompts)} prompts ({min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens), "
          f"{args.decode_steps} teacher-forced decoding steps each; CPU flags: {cpu_flags()}; "
          f"threads {compute.run(torch.get_num_threads)}")
    header = ["mode", "prefill KL", "prefill top-1", "prefill max|d|", "decode KL", "decode top-1", "decode max|d|"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(f"| {r['mode']} | {r['prefill_kl']:.4f} | {r['prefill_top1']:.3f} | {r['prefill_max_abs']:.2f} | "
              f"{r['decode_kl']:.4f} | {r['decode_top1']:.3f} | {r['decode_max_abs']:.2f} |")
    print(json.dumps({"prompts": len(prompts), "prompt_tokens": [len(i) for i in prompt_ids],
                      "decode_steps": args.decode_steps, "cpu_flags": cpu_flags(), "results": results}))


if __name__ == "__main__":
    main()
