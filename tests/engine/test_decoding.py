"""The decoding loop picks the tokens transformers' ``generate`` picks, and streams text that joins up."""

import pytest
import torch

from kbcore.config import LLMSettings
from engine.decoding import DecodeOptions, decode, stop_ids, text_pieces
from engine.forward import DecoderLayersForward, TransformersForward
from engine.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    return load_model(LLMSettings(model=str(tiny_model_dir), device="cpu", quantization="fp32"),
                      tmp_path_factory.mktemp("cache"), shared=False)


@pytest.mark.parametrize("forward_kind", [TransformersForward, DecoderLayersForward])
def test_greedy_tokens_with_a_repetition_penalty_match_generate(tiny, forward_kind):
    question = tiny.tokenizer("供应商应当具备什么条件？供应商", return_tensors="pt")["input_ids"]
    free = list(decode(forward_kind(tiny.model, 8), question, DecodeOptions(max_new_tokens=3)))
    # The tokens the model would write, already in the prompt: the penalty must steer it elsewhere.
    ids = torch.cat([torch.tensor([free]), question], dim=1)
    expected = tiny.model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                   repetition_penalty=1.3)[0, ids.shape[1]:].tolist()
    options = DecodeOptions(max_new_tokens=20, min_new_tokens=20, repetition_penalty=1.3,
                            stop_ids=stop_ids(tiny.model, tiny.tokenizer))
    assert list(decode(forward_kind(tiny.model, 8), ids, options)) == expected
    unpenalised = list(decode(forward_kind(tiny.model, 8), ids, DecodeOptions(max_new_tokens=20)))
    assert unpenalised != expected  # the penalty changed something, so the comparison above means something


def fixed(logits):
    return lambda ids: torch.tensor([logits], dtype=torch.float32)


def test_stop_tokens_end_the_answer_only_after_the_minimum_length():
    prefers_stop = fixed([0.0, 1.0, 5.0])  # token 2 is the stop token
    assert list(decode(prefers_stop, torch.tensor([[0]]), DecodeOptions(max_new_tokens=9, stop_ids=(2,)))) == [2]
    held = DecodeOptions(max_new_tokens=9, stop_ids=(2,), min_new_tokens=3)
    assert list(decode(prefers_stop, torch.tensor([[0]]), held)) == [1, 1, 1, 2]


def test_sampling_stays_in_the_nucleus_and_repeats_with_a_seed():
    forward = fixed([4.0, 3.9, 0.0, -9.0])  # tokens 0 and 1 hold ~99 % of the probability
    options = DecodeOptions(max_new_tokens=200, temperature=1.0, top_p=0.9)

    def sample(seed):
        return list(decode(forward, torch.tensor([[3]]), options, torch.Generator().manual_seed(seed)))

    tokens = sample(0)
    assert set(tokens) == {0, 1}
    assert sample(0) == tokens and sample(1) != tokens


def test_streamed_pieces_join_to_the_decoded_text_and_never_split_a_character(tiny):
    text = "政府采购应当遵循公开透明原则、公平竞争原则。Debian 🐧 好！"
    ids = tiny.tokenizer(text)["input_ids"]
    pieces = list(text_pieces(tiny.tokenizer, ids + [tiny.tokenizer.eos_token_id]))
    assert "".join(pieces) == text
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)


def test_streamed_pieces_of_any_tokens_join_to_their_decoded_text(tiny):
    """Random ids include bytes that make no character: the pieces still join to what decoding them all gives
    (each piece is decoded from a window of the ids, never the whole answer)."""
    generator = torch.Generator().manual_seed(0)
    vocabulary = tiny.tokenizer.vocab_size
    for _ in range(20):
        ids = torch.randint(0, vocabulary, (60,), generator=generator).tolist()
        pieces = list(text_pieces(tiny.tokenizer, ids))
        assert "".join(pieces) == tiny.tokenizer.decode(ids, skip_special_tokens=True)


def test_streamed_pieces_keep_the_spaces_a_sentencepiece_decoder_strips_at_the_start():
    """Llama-style tokenizers drop the space of the first token decoded: each piece is decoded after the one
    before it, so words keep their spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "▁hello": 1, "▁world": 2, "▁again": 3}, unk_token="<unk>"))
    words.pre_tokenizer, words.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words)
    assert list(text_pieces(tokenizer, [1, 2, 3, 2])) == ["hello", " world", " again", " world"]


def cycling(period):
    """A toy model that always prefers the token after the last one, modulo ``period``: it loops for ever."""
    def forward(ids):
        logits = torch.zeros(1, 16)
        logits[0, (int(ids[0, -1]) + 1) % period] = 1.0
        logits[0, 15] = 0.5  # the second choice, once the first is refused
        return logits
    return forward


def test_a_model_that_loops_is_stopped_after_three_turns_of_the_loop():
    tokens = list(decode(cycling(4), torch.tensor([[3]]), DecodeOptions(max_new_tokens=100, stop_loops=True)))
    assert tokens == [0, 1, 2, 3] * 3
    assert len(list(decode(cycling(4), torch.tensor([[3]]), DecodeOptions(max_new_tokens=100)))) == 100


def test_no_repeat_ngram_refuses_the_token_that_would_repeat_the_answer():
    options = DecodeOptions(max_new_tokens=12, no_repeat_ngram=3)
    tokens = list(decode(cycling(4), torch.tensor([[3]]), options))
    grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    assert len(grams) == len(set(grams)) and 15 in tokens  # the loop was broken by the second choice
    # The prompt does not count: the answer may copy the prompt's n-grams.
    prompt = torch.tensor([[0, 1, 2, 3]])
    assert list(decode(cycling(4), prompt, DecodeOptions(max_new_tokens=3, no_repeat_ngram=3))) == [0, 1, 2]
