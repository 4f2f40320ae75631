import pytest


@pytest.fixture(scope="session")
def default_model_dir(settings):
    """The default model converted from its PyPI parts (once per machine: ~1 min, then cached)."""
    from llm.models import resolve_model_dir

    return resolve_model_dir(settings.llm, settings.cache_dir)


@pytest.fixture(scope="session")
def random_qwen2(default_model_dir, tmp_path_factory):
    """``random_qwen2(name, **sizes)``: a 2-layer Qwen2 with random weights, the given sizes (hidden_size,
    intermediate_size, heads), and the real Qwen tokenizer and chat template. Untied output weights: tied random
    embeddings just echo the last prompt token (a newline here)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    def make(name, **sizes):
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
        config = Qwen2Config(vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=4096,
                             tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, **sizes)
        path = tmp_path_factory.mktemp(name)
        Qwen2ForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(random_qwen2):
    return random_qwen2("tiny-qwen2", hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=1)
