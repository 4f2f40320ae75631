"""Training-step benchmark: 4-bit QLoRA against a LoRA baseline on unquantised weights, at 256 and 512 tokens, in one run.

    .venv/bin/python bench/bench_train.py [--steps 2] [--lengths 256 512] [--baseline-dtype auto]

Each configuration runs in its own process (so its peak RSS is its own): load the configured model, add LoRA r=16
on all linear layers with gradient checkpointing and 8-bit AdamW (``finetune.train``), run one warm-up step and
``--steps`` timed steps of batch 1 on real text (``../shared/eval/finetune/train.jsonl``), every token an answer
token. ``--baseline-dtype auto`` is bfloat16 where the hardware has it natively (GPU, AVX512-BF16 CPU) and float32
elsewhere: emulated bfloat16 is many times slower per layer on AVX2 CPUs, which would measure the emulation, not LoRA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "eval" / "finetune" / "train.jsonl"


def one(kind: str, length: int, steps: int, baseline_dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from finetune.data import Encoded, read_jsonl
    from finetune.train import add_lora, answer_loss, collate, make_optimizer, peak_rss_mib
    from kbcore.config import FinetuneSettings, load_settings
    from engine.models import load_model, resolve_model_dir

    settings = load_settings()
    config = FinetuneSettings()
    started = time.perf_counter()
    if kind == "qlora-nf4":
        loaded = load_model(settings.llm, settings.cache_dir, for_training=True)
        model, tokenizer = add_lora(loaded.model, config), loaded.tokenizer
        dtype = "nf4 (compute " + str(next(m.compute_dtype for m in model.modules() if hasattr(m, "quant_state"))
                                      ).replace("torch.", "") + ")"
    else:
        from bitsandbytes.functional import has_avx512bf16
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer

        if baseline_dtype == "auto":
            baseline_dtype = "bfloat16" if torch.cuda.is_available() or has_avx512bf16() else "float32"
        path = resolve_model_dir(settings.llm, settings.cache_dir)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, baseline_dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        from finetune.train import LORA_TARGETS

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
        dtype = baseline_dtype
    load_seconds = time.perf_counter() - started
    model.train()
    text = "".join(r.output for r in read_jsonl(TRAIN).records)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
    batch = collate([Encoded(ids, ids)], pad_id=0)
    optimizer = make_optimizer(model, config)
    times = []
    for _ in range(steps + 1):
        tick = time.perf_counter()
        total, tokens = answer_loss(model, batch)
        (total / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tick)
    timed = times[1:]
    return {"kind": kind, "dtype": dtype, "tokens": length, "load_s": round(load_seconds, 1),
            "s_per_step": round(sum(timed) / len(timed), 2), "min_s": round(min(timed), 2),
            "peak_rss_mib": round(peak_rss_mib()), "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--kinds", nargs="+", default=["qlora-nf4", "lora-full"])
    parser.add_argument("--baseline-dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, args.baseline_dtype)))
        return 0
    rows = []
    for length in args.lengths:
        for kind in args.kinds:
            proc = subprocess.run([sys.executable, __file__, "--one", kind, str(length), "--steps", str(args.steps),
                                   "--baseline-dtype", args.baseline_dtype], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{'method':<12}{'weights':<24}{'tokens':>7}{'s/step':>9}{'min s':>8}{'peak RSS MiB':>14}{'load s':>8}")
    for r in rows:
        print(f"{r['kind']:<12}{r['dtype']:<24}{r['tokens']:>7}{r['s_per_step']:>9}{r['min_s']:>8}"
              f"{r['peak_rss_mib']:>14}{r['load_s']:>8}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
