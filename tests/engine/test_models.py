"""Weight formats of the serving model on CPU: int8 and fp16 kernels stay close to fp32, and adapters merge
into them; on the tiny random Qwen2 (real tokenizer)."""

import json

import pytest
import torch

from kbcore.config import LLMSettings
from engine.adapters import ADAPTER_META, AdapterError, apply_adapter
from engine.models import load_model, resolve_quantization


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer("政府采购的供应商应当具备哪些条件？第二十二条 具有良好的商业信誉。", return_tensors="pt")


def logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(**ids).logits[0].float()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def random_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on all linear layers with random (non-zero) weights, saved as kbchat saves adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("adapters") / "random"
    peft_model.save_pretrained(folder)
    (folder / ADAPTER_META).write_text(json.dumps({"name": "random", "base_model": str(tiny_model_dir),
                                                   "base_model_sha256": str(tiny_model_dir)}), encoding="utf-8")
    return folder


def test_auto_is_nf4_where_our_kernels_run_and_int8_on_other_cpus():
    kernels = object()  # stands for engine.native's library, loaded
    assert resolve_quantization(LLMSettings(), "cuda", None) == "nf4"
    assert resolve_quantization(LLMSettings(quantization="fp32"), "cpu", kernels) == "fp32"
    assert resolve_quantization(LLMSettings(), "cpu", kernels) == "nf4"
    assert resolve_quantization(LLMSettings(nf4_kernel=False), "cpu", kernels) == "int8"
    assert resolve_quantization(LLMSettings(), "cpu", None) == "int8"


def test_a_cpu_without_kernels_loads_auto_as_int8(tiny_model_dir, tmp_path, monkeypatch):
    from engine import native

    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", "false")  # no working compiler: no kernels
    loaded = load_model(LLMSettings(model=str(tiny_model_dir), device="cpu"), tmp_path, shared=False)
    assert loaded.quantization == "int8" and loaded.native is None


@pytest.mark.parametrize("mode, min_cosine", [("fp16", 0.9999), ("int8", 0.99)])
def test_cpu_weights_replace_every_linear_and_stay_close_to_fp32(tiny_model_dir, prompt_ids, tmp_path, mode,
                                                                 min_cosine):
    reference = load_model(LLMSettings(model=str(tiny_model_dir), device="cpu", quantization="fp32"), tmp_path,
                           shared=False)
    quantised = load_model(LLMSettings(model=str(tiny_model_dir), device="cpu", quantization=mode), tmp_path,
                           shared=False)
    assert quantised.quantization == mode
    assert not any(isinstance(m, torch.nn.Linear) for m in quantised.model.modules())
    assert cosine(logits(quantised, prompt_ids), logits(reference, prompt_ids)) > min_cosine
    generated = quantised.model.generate(**prompt_ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt_ids["input_ids"].shape[1] + 3


def test_an_adapter_is_merged_before_int8_and_refused_after(tiny_model_dir, random_adapter, prompt_ids, tmp_path):
    from dataclasses import replace

    fp32 = LLMSettings(model=str(tiny_model_dir), device="cpu", quantization="fp32", adapter=str(random_adapter))
    with_adapter = logits(load_model(fp32, tmp_path, shared=False), prompt_ids)
    base = logits(load_model(replace(fp32, adapter=None), tmp_path, shared=False), prompt_ids)
    int8 = load_model(replace(fp32, quantization="int8"), tmp_path, shared=False)
    assert int8.adapter == "random"
    merged = logits(int8, prompt_ids)
    # The adapter moved the outputs, and int8 keeps that move: closer to fp32 + adapter than to the base.
    assert cosine(with_adapter, base) < 0.99
    assert (merged - with_adapter).norm() < 0.25 * (merged - base).norm()
    with pytest.raises(AdapterError, match="already quantised"):
        apply_adapter(int8, str(random_adapter), tmp_path)
