"""A tiny Qwen2 (biased q/k/v, like the real one) with a character-level tokenizer, saved to a folder and loaded
back in 4-bit NF4 through bitsandbytes on CPU, exactly as the real model is loaded for training."""

from __future__ import annotations

from pathlib import Path

import pytest

EVAL_FINETUNE = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "finetune"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices on a shared 2-core machine: OpenMP threads fighting other processes cost 50x here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_char_tokenizer(texts):
    """One token per character seen in ``texts`` (plus ChatML's special tokens), a fast tokenizer with a chat
    template: small enough for a tiny model's vocabulary, real enough to test prompt formatting and masking."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("".join(texts)))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHATML, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="[UNK]")


@pytest.fixture(scope="session")
def corpus_texts():
    from llm.prompts import ANSWER_RULE, LABELS, NOT_FOUND, QUOTED, SYSTEM

    texts = [*SYSTEM.values(), *NOT_FOUND.values(), *ANSWER_RULE.values(), *QUOTED.values(),
             " ".join(LABELS["zh"] + LABELS["en"])]
    texts.append("0123456789《》【】[] ·>-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n")
    for name in ("train.jsonl", "heldout.jsonl"):
        path = EVAL_FINETUNE / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8"))
    return texts


@pytest.fixture(scope="session")
def char_tokenizer(corpus_texts):
    return make_char_tokenizer(corpus_texts)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(char_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         pad_token_id=char_tokenizer.pad_token_id, eos_token_id=char_tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path


def load_tiny(path, *, quantized=True, compute_dtype="float32", repacking_fix=True):
    """A fresh ``LoadedModel`` of the tiny model: NF4 + double quant like ``engine.models`` (float32 compute by default
    so the comparison with a float32 reference can be tight), or float32 when ``quantized=False``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from engine.models import disable_bf16_repacking
    from engine.models import LoadedModel

    kwargs = {"dtype": torch.float32}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kwargs)
    if quantized and repacking_fix:
        disable_bf16_repacking(model)
    return LoadedModel(model, AutoTokenizer.from_pretrained(path), "tiny-qwen2", "tiny-sha", "cpu")


@pytest.fixture
def tiny(tiny_model_dir):
    return lambda **kw: load_tiny(tiny_model_dir, **kw)


@pytest.fixture(scope="session")
def train_records():
    from finetune.data import read_jsonl

    path = EVAL_FINETUNE / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"no {path}")
    return read_jsonl(path).records
