"""The decoding loop: prompt in, token ids out one at a time, then text pieces for streaming.

Our own loop rather than ``model.generate``: generate's per-token machinery (logits processors over the whole
vocabulary, stopping criteria, streamer hooks, cache bookkeeping) cost a large share of a small model's CPU
decode step (``bench/bench_llm.py --generation app,transformers``). Here a step is one forward, a repetition
penalty on the tokens already seen, and an argmax.
Greedy decoding gives the tokens ``model.generate`` gives with the same settings (tests compare them).

>>> import torch
>>> def forward(ids):  # a toy model that always prefers the token after the last one
...     logits = torch.zeros(1, 8)
...     logits[0, (ids[0, -1] + 1) % 8] = 1.0
...     return logits
>>> list(decode(forward, torch.tensor([[3]]), DecodeOptions(max_new_tokens=10, stop_ids=(6,))))
[4, 5, 6]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from engine.forward import Forward


@dataclass(frozen=True)
class DecodeOptions:
    max_new_tokens: int
    # 0: greedy. Otherwise sampling at this temperature from the smallest set of tokens holding ``top_p``.
    temperature: float = 0.0
    top_p: float = 0.9
    # transformers' convention: logits of tokens already in the prompt or answer are divided by it (multiplied
    # when negative).
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()
    # Tokens the answer may not start with.
    banned_first: tuple[int, ...] = ()
    # Stop tokens are refused before this many tokens (benchmarks time a fixed length).
    min_new_tokens: int = 0
    # A token that would repeat an n-gram of this many tokens already in the answer is refused (0: off); the
    # prompt does not count, so copying a passage stays free.
    no_repeat_ngram: int = 0
    # Stop when the answer's last tokens are one piece said over and over (see ``looping``).
    stop_loops: bool = False


def decode(forward: Forward, prompt_ids: torch.Tensor, options: DecodeOptions,
           generator: torch.Generator | None = None) -> Iterator[int]:
    """Token ids of the answer to ``prompt_ids`` (1, prompt length), as they are chosen; a stop token is
    yielded last. ``forward`` must be fresh: it keeps the cache of this one generation."""
    with torch.inference_mode():
        logits = forward(prompt_ids)
        seen = set(prompt_ids[0].tolist())
        seen_ids = torch.tensor(sorted(seen), dtype=torch.long, device=logits.device)
        stop = set(options.stop_ids)
        answer: list[int] = []
        followers: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram of the answer -> tokens that followed it
        n = options.no_repeat_ngram
        for step in range(options.max_new_tokens):
            scores = logits[0].float()
            if n > 1 and len(answer) >= n - 1 and (banned := followers.get(tuple(answer[len(answer) - n + 1:]))):
                scores[list(banned)] = float("-inf")
            if options.repetition_penalty != 1.0 and len(seen_ids):
                previous = scores[seen_ids]
                scores[seen_ids] = torch.where(previous < 0, previous * options.repetition_penalty,
                                               previous / options.repetition_penalty)
            if step == 0 and options.banned_first:
                scores[list(options.banned_first)] = float("-inf")
            if step < options.min_new_tokens and stop:
                scores[list(stop)] = float("-inf")
            token = _choose(scores, options, generator)
            yield token
            if token in stop:
                return
            answer.append(token)
            if n > 1 and len(answer) >= n:
                followers.setdefault(tuple(answer[-n:-1]), set()).add(token)
            if options.stop_loops and looping(answer):
                return
            if token not in seen:
                seen.add(token)
                seen_ids = torch.cat([seen_ids, seen_ids.new_tensor([token])])
            if step + 1 < options.max_new_tokens:
                logits = forward(torch.tensor([[token]], device=prompt_ids.device))


def looping(tokens: list[int], longest: int = 20, shortest_run: int = 9) -> bool:
    """True when the tokens end in one piece of at most ``longest`` tokens said three times in a row (and in
    at least ``shortest_run`` tokens, so "……" or "1. 2. 3." are not loops).

    >>> looping([5, 1, 2, 3, 1, 2, 3, 1, 2, 3]), looping([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    (True, False)
    """
    for period in range(1, min(longest, len(tokens) // 3) + 1):
        run = max(3 * period, shortest_run)
        if len(tokens) >= run and all(tokens[-i] == tokens[-i - period] for i in range(1, run - period + 1)):
            return True
    return False


def _choose(scores: torch.Tensor, options: DecodeOptions, generator: torch.Generator | None) -> int:
    if options.temperature <= 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / options.temperature, dim=-1)
    probs, order = probs.sort(descending=True)
    outside = probs.cumsum(0) - probs >= options.top_p  # tokens after the nucleus is full
    probs[outside] = 0.0
    return int(order[torch.multinomial(probs, 1, generator=generator)])


def text_pieces(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """The text of ``token_ids`` in pieces as tokens arrive; the pieces join to the decoded whole. A character
    split across tokens (byte-level BPE cuts Chinese characters) waits for its last byte.

    Each step decodes only the tokens since the last piece and the ones before it, for context (how vLLM
    detokenises): decoding the whole answer at every token costs time growing with the square of its length.
    """
    ids: list[int] = []
    context = pending = 0  # ids[context:pending] were emitted and give the next piece its context
    emitted = ""  # their text
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids[context:], skip_special_tokens=True)
        if not text.endswith("\ufffd") and text.startswith(emitted) and len(text) > len(emitted):
            yield text[len(emitted):]
            context, pending = pending, len(ids)
            emitted = tokenizer.decode(ids[context:pending], skip_special_tokens=True)
    text = tokenizer.decode(ids[context:], skip_special_tokens=True)
    if text.startswith(emitted) and len(text) > len(emitted):  # the end, even if it is a replacement character
        yield text[len(emitted):]


def stop_ids(model, tokenizer) -> tuple[int, ...]:
    """End-of-turn tokens: the generation config's ``eos_token_id`` (one or several) and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
    ids.append(tokenizer.eos_token_id)
    return tuple(sorted({i for i in ids if i is not None}))
