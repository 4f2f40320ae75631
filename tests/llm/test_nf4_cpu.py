"""bitsandbytes NF4 weights computed by our AVX2 kernel: the same products as bitsandbytes' dequantised weights,
one call for sibling projections, the same logits as the bitsandbytes model when loaded, and bitsandbytes'
own layers where the kernel can't be built."""

import logging

import pytest
import torch

from kbcore.config import LLMSettings
from llm import nf4_cpu
from llm.forward import DecoderLayersForward, TransformersForward
from llm.models import load_model
from llm import native
from llm.nf4_cpu import NF4Linear, NF4Projections, nf4_product

pytestmark = pytest.mark.skipif(not native.cpu_supports_native(), reason="the NF4 kernel needs AVX2 and FMA")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    library = native.load_native(tmp_path_factory.mktemp("kernels"))
    assert library is not None, "a C compiler is on this machine, so the kernel must build"
    return library


def bitsandbytes_linear(in_features, out_features, bias=True):
    """A bitsandbytes Linear4bit quantised on the CPU, as ``from_pretrained`` with our NF4 config makes them."""
    import bitsandbytes as bnb

    float_linear = torch.nn.Linear(in_features, out_features, bias=bias)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias, compute_dtype=torch.float32,
                              quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(float_linear.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    layer.bias = float_linear.bias
    return layer.to("cpu")


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("tokens", [1, 3, 6, 100])
def test_products_match_bitsandbytes_dequantised_weights(kernel, tokens):
    from bitsandbytes.functional import dequantize_4bit

    torch.manual_seed(tokens)
    reference = bitsandbytes_linear(896, 320)
    ours = NF4Linear.from_bitsandbytes(reference, kernel)
    weight = dequantize_4bit(reference.weight.data, reference.weight.quant_state)
    assert torch.allclose(ours.dequantized(), weight, rtol=1e-6, atol=1e-8)  # to float rounding
    x = torch.randn(2, tokens, 896)
    x[..., 7] *= 60  # an outlier channel: inputs are scaled per block of 64, not per token
    expected = torch.nn.functional.linear(x, weight, reference.bias)
    got = ours(x)
    assert got.shape == (2, tokens, 320)
    # One to six tokens run on the 16-bit kernel (exact to ~1e-4), a hundred on the dequantised matrix.
    assert relative_error(got, expected) < (5e-4 if tokens <= nf4_cpu.MAX_KERNEL_TOKENS else 1e-6)
    with torch.no_grad():
        assert relative_error(got, reference(x)) < 5e-4


def test_sibling_projections_are_one_call_with_outputs_side_by_side(kernel):
    torch.manual_seed(0)
    q, k, v = (NF4Linear.from_bitsandbytes(bitsandbytes_linear(128, width, bias=bias), kernel)
               for width, bias in ((128, True), (64, False), (64, True)))
    projections = NF4Projections([q, k, v])
    for tokens in (1, 100):
        x = torch.randn(tokens, 128)
        together = projections(x)
        assert torch.equal(together, nf4_product(x, [q, k, v], projections))
        assert torch.allclose(together, torch.cat([q(x), k(x), v(x)], dim=-1), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def model_dir(random_qwen2):
    """Widths that are multiples of the kernel's 64-wide blocks (the shared tiny model's 32 are not)."""
    return random_qwen2("qwen2-128", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                        num_key_value_heads=2)


def run(forward, prompt, continuation):
    with torch.inference_mode():
        return torch.cat([forward(prompt)] + [forward(torch.tensor([[token]])) for token in continuation])


def test_a_loaded_nf4_model_runs_on_the_kernel_with_the_logits_of_bitsandbytes_layers(model_dir, tmp_path):
    settings = LLMSettings(model=str(model_dir), device="cpu", quantization="nf4")
    ours = load_model(settings, tmp_path, shared=False)
    plain = load_model(LLMSettings(model=str(model_dir), device="cpu", quantization="nf4", nf4_kernel=False),
                       tmp_path, shared=False)
    modules = list(ours.model.modules())
    assert sum(isinstance(m, NF4Projections) for m in modules) == 4  # q/k/v and gate/up of both layers
    assert not any(type(m).__name__ == "Linear4bit" for m in modules)
    assert isinstance(ours.model.lm_head, NF4Linear)
    assert any(type(m).__name__ == "Linear4bit" for m in plain.model.modules())
    # The baseline's float output layer gets the values our 4-bit one holds; everything else is the same weights.
    with torch.no_grad():
        plain.model.lm_head.weight.copy_(ours.model.lm_head.dequantized())

    prompt = ours.tokenizer("政府采购的供应商应当具备哪些条件？第二十二条 具有良好的商业信誉。" * 4,
                            return_tensors="pt")["input_ids"]
    assert prompt.shape[1] > nf4_cpu.MAX_KERNEL_TOKENS  # the prompt runs on dequantised weights, the rest not
    continuation = [11, 3000, 151, 42, 7]
    got = run(DecoderLayersForward(ours.model, 64), prompt, continuation)
    expected = run(TransformersForward(plain.model, 64), prompt, continuation)
    assert relative_error(got, expected) < 1e-3
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_without_a_working_compiler_bitsandbytes_layers_stay_and_say_why(model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="llm.native"):
        loaded = load_model(LLMSettings(model=str(model_dir), device="cpu", quantization="nf4"), tmp_path,
                            shared=False)
    assert "compiling with false failed" in caplog.text
    assert any(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    assert not any(isinstance(m, NF4Linear) for m in loaded.model.modules())
    with torch.inference_mode():
        assert torch.isfinite(loaded.model(input_ids=torch.tensor([[11, 3000, 151]])).logits).all()


def test_our_quantisation_is_bitsandbytes_own(kernel):
    from bitsandbytes.functional import quantize_4bit

    torch.manual_seed(0)
    weight = torch.randn(96, 640) * torch.rand(96, 1)  # rows of different scales
    weight[3, 100] = 40.0
    codes, state = nf4_cpu.quantize_nf4(weight, kernel)
    expected_codes, expected = quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert torch.equal(codes, expected_codes)
    assert torch.equal(state.absmax, expected.absmax) and torch.equal(state.state2.absmax, expected.state2.absmax)
    assert state.offset == expected.offset and state.shape == expected.shape


def test_an_adapter_keeps_its_effect_on_the_kernel(model_dir, tmp_path):
    import json
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llm.adapters import ADAPTER_META

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    folder = tmp_path / "random"
    peft_model.save_pretrained(folder)
    (folder / ADAPTER_META).write_text(json.dumps({"name": "random", "base_model": str(model_dir),
                                                   "base_model_sha256": str(model_dir)}), encoding="utf-8")

    settings = LLMSettings(model=str(model_dir), device="cpu", quantization="nf4", adapter=str(folder))
    ours = load_model(settings, tmp_path, shared=False)
    plain = load_model(replace(settings, nf4_kernel=False), tmp_path, shared=False)
    base = load_model(replace(settings, adapter=None), tmp_path, shared=False)
    assert ours.adapter == "random"
    assert sum(isinstance(m, NF4Linear) for m in ours.model.modules()) == 15  # 7 per layer, and the output layer
    with torch.no_grad():
        plain.model.get_output_embeddings().weight.copy_(ours.model.get_output_embeddings().dequantized())
        ids = torch.tensor([[11, 3000, 151, 42, 7, 99]])
        got, expected, without = (m.model(input_ids=ids).logits for m in (ours, plain, base))
    assert relative_error(got, expected) < 1e-3
    assert relative_error(got, without) > 0.05  # the adapter moved the outputs
