"""Merge an adapter into its base model and export a standalone model folder (safetensors + tokenizer).

The adapter was trained against the 4-bit NF4 base, so the weights it learnt to correct are the *dequantised* NF4
weights, not the original ones: merging reproduces them (quantise, dequantise, with the same block size and
double quantisation as training) before adding the LoRA product. The result runs without peft or bitsandbytes,
in bfloat16 (or float32 with ``dtype="float32"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal


def dequantised_copy_(model, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every linear weight (except ``skip``) by its NF4 round trip, in place, as the trainer saw it."""
    import bitsandbytes.functional as bnbf
    import torch

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(s in name for s in skip):
            weight = module.weight.data
            packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
            module.weight.data = bnbf.dequantize_4bit(packed, state).to(weight.dtype)
            count += 1
    return count


def merge_model(model, adapter_dir: str | Path):
    """``model`` (full precision, NF4 round trip applied) with the adapter's LoRA product added into its weights."""
    from peft import PeftModel

    dequantised_copy_(model)  # in the dtype the base was quantised from (bfloat16 for the presets)
    return PeftModel.from_pretrained(model.float(), str(adapter_dir)).merge_and_unload()


def merge_adapter(settings, adapter: str, out_dir: str | Path,
                  dtype: Literal["bfloat16", "float32"] = "bfloat16") -> Path:
    """Write ``out_dir``: the configured base model with ``adapter`` merged in, loadable by ``from_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.adapters import check_base, resolve_adapter
    from engine.models import model_fingerprint, resolve_model_dir

    info = resolve_adapter(adapter, settings.adapters_dir)
    check_base(info, settings.llm.model, model_fingerprint(settings.llm))
    base_dir = resolve_model_dir(settings.llm, settings.cache_dir)
    # bfloat16 as training loaded it (so the NF4 round trip is the same); merge_model adds the LoRA in float32.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16, device_map="cpu")
    merged = merge_model(model, info.path).to(getattr(torch, dtype))
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    (out_dir / "KBCHAT_MERGED.json").write_text(json.dumps(
        {"base_model": info.base_model, "base_model_sha256": info.base_model_sha256, "adapter": info.name,
         "dtype": dtype}, indent=2), encoding="utf-8")
    return out_dir
