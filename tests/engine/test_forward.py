"""The direct decoder-layer forward computes what transformers' forward computes, on the tiny random Qwen2,
in fp32 and with the fused int8 CPU kernels; other models keep transformers' forward."""

import pytest
import torch

from kbcore.config import LLMSettings
from engine.forward import DecoderLayersForward, TransformersForward, model_forward
from engine.models import load_model


@pytest.fixture(scope="module")
def prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer("政府采购的供应商应当具备哪些条件？第二十二条 具有良好的商业信誉。", return_tensors="pt")["input_ids"]


def loaded_tiny(tiny_model_dir, tmp_path, quantization):
    return load_model(LLMSettings(model=str(tiny_model_dir), device="cpu", quantization=quantization), tmp_path,
                      shared=False)


def run(forward, prompt, continuation):
    """Logits after the prompt, then after each continuation token fed one at a time."""
    with torch.inference_mode():
        out = [forward(prompt)]
        out += [forward(torch.tensor([[token]])) for token in continuation]
    return torch.cat(out)


@pytest.mark.parametrize("quantization, atol", [("fp32", 1e-5), ("int8", 0.05)])
@pytest.mark.parametrize("native", [False, True], ids=["torch-ops", "native-decode-ops"])
def test_direct_layers_give_the_logits_of_the_model_forward(tiny_model_dir, tmp_path, prompt, quantization, atol,
                                                            native):
    loaded = loaded_tiny(tiny_model_dir, tmp_path, quantization)
    assert isinstance(model_forward(loaded, 64), DecoderLayersForward)
    if native and loaded.native is None:
        pytest.skip("engine.native's kernels need AVX2/FMA and a C compiler")
    continuation = [11, 3000, 151, 42, 7, 99]
    direct = run(DecoderLayersForward(loaded.model, 64, native=loaded.native if native else None), prompt,
                 continuation)
    reference = run(TransformersForward(loaded.model, 64), prompt, continuation)
    assert direct.shape == (1 + len(continuation), loaded.model.config.vocab_size)
    # int8: one token's activations are scaled per call by the kernel instead of per token before it.
    assert torch.allclose(direct, reference, atol=atol, rtol=0)
    assert torch.equal(direct.argmax(-1), reference.argmax(-1))
    # A cache too small for the prompt grows, during the prompt and during decoding, to the same logits.
    grown = run(DecoderLayersForward(loaded.model, 3, native=loaded.native if native else None), prompt,
                continuation)
    assert torch.allclose(grown, direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("native", [False, True], ids=["torch-ops", "native-ops"])
def test_a_multi_token_continuation_and_a_cache_that_must_grow_give_the_same_logits(tiny_model_dir, tmp_path,
                                                                                    prompt, native):
    loaded = loaded_tiny(tiny_model_dir, tmp_path, "fp32")
    if native and loaded.native is None:
        pytest.skip("engine.native's kernels need AVX2/FMA and a C compiler")
    whole = torch.cat([prompt, torch.tensor([[11, 3000, 151, 42]])], dim=1)
    with torch.inference_mode():
        expected = loaded.model(input_ids=whole).logits[:, -1]
        # less room than the prompt
        small = DecoderLayersForward(loaded.model, capacity=3, native=loaded.native if native else None)
        small(prompt)
        continued = small(whole[:, prompt.shape[1]:])  # four tokens at once, after the cached prompt
    assert small.keys.shape[-2] >= whole.shape[1]
    assert torch.allclose(continued, expected, atol=1e-5, rtol=0)


def test_models_outside_the_llama_family_and_adapter_wrapped_models_use_transformers(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from engine.models import LoadedModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).eval()
    forward = model_forward(LoadedModel(gpt2, None, "gpt2", "x", "cpu"), 16)
    assert isinstance(forward, TransformersForward)
    with torch.inference_mode():
        assert forward(torch.tensor([[1, 2, 3]])).shape == (1, 64)
    qwen = loaded_tiny(tiny_model_dir, tmp_path, "fp32").model
    wrapped = get_peft_model(qwen, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not DecoderLayersForward.supports(wrapped)


def test_a_prompt_that_opens_like_the_last_one_reuses_its_keys_and_gets_the_same_logits(tiny_model_dir, tmp_path):
    from engine.forward import PromptCache

    loaded = loaded_tiny(tiny_model_dir, tmp_path, "fp32")
    tokenizer = loaded.tokenizer
    opening = "你是一个严谨的知识库问答助手。请根据下面编号的资料回答用户的问题，用简体中文作答，简洁准确。"
    first, second = (tokenizer(opening + tail, return_tensors="pt")["input_ids"]
                     for tail in ("资料1：政府采购法第二十二条。问题：供应商条件？", "资料1：招标投标法第六十条。问题：保证金？"))
    shared = next(i for i, (a, b) in enumerate(zip(first[0], second[0])) if a != b)
    cache = PromptCache(loaded.model)
    with torch.inference_mode():
        DecoderLayersForward(loaded.model, 64, cache)(first)
        assert cache.shared(second[0].tolist()) == shared >= PromptCache.MIN_REUSE
        reusing = DecoderLayersForward(loaded.model, 64, cache)
        logits = reusing(second)
        after = reusing(torch.tensor([[11]]))
        fresh = DecoderLayersForward(loaded.model, 64)
        assert torch.allclose(logits, fresh(second), atol=1e-5, rtol=0)
        assert torch.allclose(after, fresh(torch.tensor([[11]])), atol=1e-5, rtol=0)
        # The same prompt again: everything but its last token comes from the cache.
        assert cache.shared(second[0].tolist()) == second.shape[1] - 1
        assert torch.allclose(DecoderLayersForward(loaded.model, 64, cache)(second), logits, atol=1e-5, rtol=0)
    assert cache.shared(tokenizer("完全不同的开头" * 4)["input_ids"]) == 0
    assert model_forward(loaded, 64).prompt_cache is loaded.prompt_cache is model_forward(loaded, 64).prompt_cache


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(14, 2, 64), (4, 4, 128), (6, 3, 16)])
@pytest.mark.parametrize("start, new", [(0, 2), (0, 37), (0, 64), (0, 65), (0, 300), (50, 100), (130, 7)])
def test_native_prompt_attention_is_causal_attention(tmp_path_factory, heads, kv_heads, head_dim, start, new):
    """engine.native's prefill_attention against torch's: queries at positions start.. attend to every cached key up
    to their own, grouped key/value heads, blocks of 32 queries and 64 keys cut anywhere."""
    from engine.native import load_native

    library = load_native(tmp_path_factory.mktemp("kernels"))
    assert library is not None, "a C compiler is on this machine, so the kernels must build"
    torch.manual_seed(start + new)
    end, capacity = start + new, start + new + 5
    rotated = torch.randn(1, new, heads + kv_heads, head_dim) * 3  # queries, then keys (unused here)
    keys, values = torch.randn(kv_heads, capacity, head_dim), torch.randn(kv_heads, capacity, head_dim)
    scale = head_dim ** -0.5
    got = torch.empty(1, new, heads * head_dim)
    library.prefill_attention(rotated.data_ptr(), rotated.stride(1), keys.data_ptr(), values.data_ptr(), start, new,
                              capacity, heads, kv_heads, head_dim, scale, got.data_ptr(), 2)
    queries = rotated[:, :, :heads].transpose(1, 2)
    visible = torch.ones(new, end, dtype=torch.bool).tril(start)
    expected = torch.nn.functional.scaled_dot_product_attention(
        queries, keys[None, :, :end], values[None, :, :end], attn_mask=visible, scale=scale, enable_gqa=True)
    expected = expected.transpose(1, 2).reshape(1, new, heads * head_dim)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
