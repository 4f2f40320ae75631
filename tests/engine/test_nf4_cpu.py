"""bitsandbytes NF4 weights computed by our AVX2 kernel: the same products as bitsandbytes' dequantised weights,
one call for sibling projections, the same logits as the bitsandbytes model when loaded, and bitsandbytes'
own layers where the kernel can't be built."""

import logging
from dataclasses import replace

import pytest
import torch

from kbcore.config import LLMSettings
from engine import nf4_cpu
from engine.forward import DecoderLayersForward, TransformersForward
from engine import models
from engine.models import load_model
from engine import native
from engine.nf4_cpu import NF4Linear, NF4Projections, nf4_product

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


def prompt_kernel_arithmetic(linear: NF4Linear, x: torch.Tensor) -> torch.Tensor:
    """What nf4_kernel.c's prompt product computes, in float64: NF4 values as integers in [-63, 63], the input
    as 7 bits with a zero point per token and block of 64."""
    codes = linear.packed.view(-1, 32)
    codes = torch.cat([codes & 15, codes >> 4], dim=1).long()  # a block's elements j and j + 32
    block_scale = (linear.code2[linear.qabsmax.long()].double()
                   * linear.absmax2.double().repeat_interleave(256)[:len(linear.qabsmax)] + linear.offset)
    weight = (torch.round(linear.code.double() * 63)[codes] * (block_scale / 63)[:, None]).view(
        linear.out_features, -1)
    blocks = x.reshape(-1, x.shape[-1] // 64, 64)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    scale = (high - low) / 127
    zero = -torch.round(low / scale)
    quantized = torch.clamp(torch.round(blocks * (1 / scale) + zero), 0, 127)
    x = ((quantized.double() - zero) * scale.double()).reshape(x.shape)
    return x @ weight.T + (0 if linear.bias is None else linear.bias.double())


@pytest.mark.parametrize("tokens", [1, 3, 6, 8, 100])
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
    with torch.no_grad():
        from_bitsandbytes = reference(x)
    if 2 * tokens < nf4_cpu.PROMPT_KERNEL_TOKENS:  # the 16-bit kernel, exact to ~1e-4
        assert relative_error(got, expected) < 5e-4 and relative_error(got, from_bitsandbytes) < 5e-4
    else:  # the prompt kernel: its own arithmetic exactly, and 7-bit inputs' error against the float product
        assert relative_error(got.double(), prompt_kernel_arithmetic(ours, x)) < 1e-5
        assert 3e-3 < relative_error(got, expected) < 3e-2 and relative_error(got, from_bitsandbytes) < 3e-2


def test_prompt_products_of_extreme_values_do_not_overflow(kernel):
    """Sums of 16-bit products at their largest: every weight its block's absmax (+-63), inputs at the top of
    their 7-bit range. A 16-bit sum that wrapped around would be off by 65536 products' worth."""
    linear = torch.nn.Linear(256, 16, bias=False)
    with torch.no_grad():
        linear.weight.fill_(0.5)
        linear.weight[8:] = -0.5
    ours = NF4Linear.quantize(linear, kernel)
    x = torch.full((32, 256), 3.0)
    x[:, ::64] = -2.9  # all but one value of each block at the top of its range
    got = ours(x)
    assert relative_error(got.double(), prompt_kernel_arithmetic(ours, x)) < 1e-6
    assert relative_error(got, x @ linear.weight.T) < 1e-2  # the 7-bit inputs' rounding


@pytest.mark.parametrize("gated, widths", [(False, (40, 48)), (False, (40,)), (True, (40, 40))])
def test_the_vnni_tiles_give_the_outputs_of_the_avx2_tiles(kernel, gated, widths):
    """Where the CPU has AVX512-VNNI the prompt kernel takes it: the same integer sums, so the same outputs. The
    widths leave panels of 3, 1 and 2 groups of eight rows."""
    if not kernel.nf4_prompt_has_vnni():
        pytest.skip("this CPU has no AVX512-VNNI")
    torch.manual_seed(1)
    linears = [NF4Linear.from_bitsandbytes(bitsandbytes_linear(256, width), kernel) for width in widths]
    owner = NF4Projections(linears)
    x = torch.randn(13, 256)  # 3 tiles of 4 tokens and one of 1
    x[:, 5] *= 40
    vnni = nf4_cpu.prompt_product(x, linears, owner, gated, vnni=True)
    assert torch.equal(vnni, nf4_cpu.prompt_product(x, linears, owner, gated, vnni=False))
    products = [prompt_kernel_arithmetic(linear, x) for linear in linears]
    expected = torch.nn.functional.silu(products[0]) * products[1] if gated else torch.cat(products, dim=-1)
    assert relative_error(vnni.double(), expected) < 1e-5


def test_prompts_in_bf16_use_the_dequantised_matrix(kernel):
    torch.manual_seed(0)
    ours = NF4Linear.from_bitsandbytes(bitsandbytes_linear(128, 64), kernel)
    x = torch.randn(nf4_cpu.MAX_KERNEL_TOKENS + 1, 128, dtype=torch.bfloat16)
    expected = torch.nn.functional.linear(x, ours.dequantized().bfloat16(), ours.bias.bfloat16())
    assert torch.equal(ours(x), expected)


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


@pytest.mark.parametrize("width, tokens", [(320, 100), (24, 9), (8, 8)])
def test_a_gated_pair_is_silu_of_the_gate_times_the_up_product_in_one_pass(kernel, width, tokens):
    """Panels of 16 gate and 16 up rows, cut at any multiple of 8; the products are the prompt kernel's own."""
    torch.manual_seed(width)
    gate, up = (NF4Linear.from_bitsandbytes(bitsandbytes_linear(128, width, bias=bias), kernel)
                for bias in (False, True))
    pair = NF4Projections([gate, up])
    x = torch.randn(1, tokens, 128)
    got = pair.silu_gated(x)
    assert got.shape == (1, tokens, width)
    expected = torch.nn.functional.silu(prompt_kernel_arithmetic(gate, x)) * prompt_kernel_arithmetic(up, x)
    assert relative_error(got.double(), expected) < 1e-5
    assert pair.silu_gated(x[:, :nf4_cpu.PROMPT_KERNEL_TOKENS - 1]) is None  # decoding: not the prompt kernel
    assert NF4Projections([gate, up, up]).silu_gated(x) is None


@pytest.fixture(scope="module")
def model_dir(random_qwen2):
    """Widths that are multiples of the kernel's 64-wide blocks (the shared tiny model's 32 are not)."""
    return random_qwen2("qwen2-128", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                        num_key_value_heads=2)


def run(forward, prompt, continuation):
    with torch.inference_mode():
        return torch.cat([forward(prompt)] + [forward(torch.tensor([[token]])) for token in continuation])


def bitsandbytes_model(settings, cache_dir, monkeypatch):
    """``settings`` on bitsandbytes' own layers, in float32 as our kernels compute, though on a CPU with native
    bf16 they would serve in bf16, on weights repacked for their bf16 kernel."""
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    loaded = load_model(replace(settings, nf4_kernel=False), cache_dir, shared=False)
    models.disable_bf16_repacking(loaded.model)
    return loaded


@pytest.mark.parametrize("prompt_kernel", [True, False])
def test_a_loaded_nf4_model_runs_on_the_kernel_with_the_logits_of_bitsandbytes_layers(model_dir, tmp_path,
                                                                                      monkeypatch, prompt_kernel):
    if not prompt_kernel:  # the prompt on the dequantised matrix: then only the 16-bit kernel's rounding is left
        monkeypatch.setattr(nf4_cpu, "PROMPT_KERNEL_TOKENS", 10 ** 9)
    settings = LLMSettings(model=str(model_dir), device="cpu", quantization="nf4")
    ours = load_model(settings, tmp_path, shared=False)
    plain = bitsandbytes_model(settings, tmp_path, monkeypatch)
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
    assert prompt.shape[1] > nf4_cpu.MAX_KERNEL_TOKENS
    continuation = [11, 3000, 151, 42, 7]
    got = run(DecoderLayersForward(ours.model, 64), prompt, continuation)
    expected = run(TransformersForward(plain.model, 64), prompt, continuation)
    # The prompt kernel's 7-bit inputs move these logits by ~2%; the float product's rounding by ~1e-5.
    assert relative_error(got, expected) < (4e-2 if prompt_kernel else 1e-3)
    if not prompt_kernel:  # a random model's top logits are too close for 2% (answers are tested in test_answer)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_one_load_looks_the_kernels_up_once(model_dir, tmp_path, monkeypatch):
    """The library is found once per load and handed to the quantisation choice, the layer swap and the
    forward, however each of them imports it: every call of load_native passes through its lock."""
    import threading

    class CountingLock:
        def __init__(self):
            self.lock, self.entered = threading.Lock(), 0

        def __enter__(self):
            self.entered += 1
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    lock = CountingLock()
    monkeypatch.setattr(native, "_lock", lock)
    loaded = load_model(LLMSettings(model=str(model_dir), device="cpu"), tmp_path, shared=False)  # "auto"
    assert loaded.quantization == "nf4" and isinstance(loaded.model.lm_head, NF4Linear)
    assert loaded.native is not None and loaded.native is loaded.model.lm_head.library
    assert lock.entered == 1


def test_without_a_working_compiler_bitsandbytes_layers_stay_and_say_why(model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="engine.native"):
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


def test_an_adapter_keeps_its_effect_on_the_kernel(model_dir, tmp_path, monkeypatch):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.adapters import ADAPTER_META

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
    plain = bitsandbytes_model(settings, tmp_path, monkeypatch)
    base = load_model(replace(settings, adapter=None), tmp_path, shared=False)
    assert ours.adapter == "random"
    assert sum(isinstance(m, NF4Linear) for m in ours.model.modules()) == 15  # 7 per layer, and the output layer
    with torch.no_grad():
        plain.model.get_output_embeddings().weight.copy_(ours.model.get_output_embeddings().dequantized())
        ids = torch.tensor([[11, 3000, 151, 42, 7, 99]])
        got, expected, without = (m.model(input_ids=ids).logits for m in (ours, plain, base))
    assert relative_error(got, expected) < 1e-3
    assert relative_error(got, without) > 0.05  # the adapter moved the outputs
