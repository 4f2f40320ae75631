"""The preallocated key/value cache decodes exactly what transformers' own cache does, growing when it must."""

import pytest
import torch

from engine.kv_cache import PreallocatedLayer, preallocated_cache


@pytest.mark.parametrize("capacity", [4096, 3])  # room for all, and room for less than the prompt
def test_greedy_decoding_matches_the_default_cache(tiny_model_dir, capacity):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    inputs = tokenizer("政府采购的供应商应当具备哪些条件？", return_tensors="pt")
    settings = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False)
    expected = model.generate(**inputs, **settings)
    cache = preallocated_cache(model.config, capacity)
    assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    assert torch.equal(model.generate(**inputs, **settings, past_key_values=cache), expected)
    assert cache.get_seq_length() == expected.shape[1] - 1  # the last token is sampled, never fed back
