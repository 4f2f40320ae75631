"""Base model against base + adapter on held-out pairs: answer-token loss, a task score, and the answer harness's
measures (``llm.eval``: answered, character F1, degenerate outputs).

Task score: **character 4-gram recall** of the reference answer in the generated one: the share of the reference's
distinct character 4-grams (NFKC, lower case, whitespace removed) that also occur in the generated answer. It rewards
the reference's key content appearing, in any order, and does not depend on a word segmenter (Chinese has no
spaces); a verbatim copy scores 1, an unrelated or refused answer near 0. Averaged over pairs.

>>> round(ngram_recall("Debian 是一个自由的操作系统。", "Debian 是自由的操作系统"), 2)
0.57
>>> ngram_recall("abc", "xyz")  # shorter than 4 characters: compared whole
0.0

Generation runs on serving instances (``engine.models.load_model`` without ``for_training``), never on a training
one, so the adapter is measured in the weight format the answer stage uses.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from finetune.data import Record, encode, prompt_text

_SPACE = re.compile(r"\s+")


def _grams(text: str, n: int = 4) -> set[str]:
    text = _SPACE.sub("", unicodedata.normalize("NFKC", text).lower())
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))} if text else set()


def ngram_recall(reference: str, generated: str, n: int = 4) -> float:
    """Share of the reference's distinct character n-grams found in the generated text."""
    ref = _grams(reference, n)
    return len(ref & _grams(generated, n)) / len(ref) if ref else 0.0


@dataclass
class Side:
    loss: float
    score: float
    answers: list[str]
    seconds: float
    # The answer harness's measures (llm.eval) against each pair's reference: answered (character recall of the
    # reference >= llm.eval.REFERENCE_RECALL), mean character F1, and the share of degenerate outputs.
    correct: float = 0.0
    f1: float = 0.0
    degenerate: float = 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


def answer_loss(model, tokenizer, records: Sequence[Record], max_seq_length: int) -> float:
    """Token-weighted mean cross-entropy over the answer tokens of the records (no gradients)."""
    import torch

    from finetune.train import answer_loss as summed_loss
    from finetune.train import collate

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for rec in records:
            batch = {k: v.to(device) for k, v in collate([encode(tokenizer, rec, max_seq_length)], 0).items()}
            loss, tokens = summed_loss(model, batch)
            total, count = total + float(loss), count + tokens
    return total / max(1, count)


def generate_answers(loaded, records: Sequence[Record], options) -> list[str]:
    """Answers to the records' grounded prompts, decoded as the answer stage decodes (``engine.decoding`` with the
    answer stage's ``DecodeOptions``; greedy, so scores compare between runs)."""
    from engine.generate import generate

    return ["".join(generate(loaded, prompt_text(loaded.tokenizer, rec), options)).strip() for rec in records]


def evaluate_side(loaded, records: Sequence[Record], *, max_seq_length: int, options) -> Side:
    started = time.perf_counter()
    loss = answer_loss(loaded.model, loaded.tokenizer, records, max_seq_length)
    answers = generate_answers(loaded, records, options) if options.max_new_tokens > 0 else []
    score = (sum(ngram_recall(r.output, a) for r, a in zip(records, answers)) / len(records)) if answers else 0.0
    return Side(loss, score, answers, time.perf_counter() - started, **answer_metrics(records, answers))


def answer_metrics(records: Sequence[Record], answers: Sequence[str]) -> dict[str, float]:
    """The harness's per-answer measures, averaged: ``correct``, ``f1`` and ``degenerate`` (see ``Side``)."""
    from llm.checks import degenerate_reason
    from llm.eval import REFERENCE_RECALL, char_recall_f1

    if not answers:
        return {}
    scores = [char_recall_f1(r.output, a) for r, a in zip(records, answers)]
    n = len(answers)
    return {"correct": sum(recall >= REFERENCE_RECALL for recall, _ in scores) / n,
            "f1": sum(f1 for _, f1 in scores) / n,
            "degenerate": sum(degenerate_reason(a, r.question) is not None for r, a in zip(records, answers)) / n}


def compare(settings, adapter: str, records: Sequence[Record], *, max_seq_length: int = 512,
            max_new_tokens: int = 128) -> dict:
    """Evaluate the configured base model, then base + adapter, each loaded as the answer stage would load it."""
    from dataclasses import replace

    from finetune.train import fast_compute_dtype
    from llm.answerer import decode_options
    from engine.models import load_model

    sides = []
    for adapter_name in (None, adapter):
        # Private instances: the shared serving cache must not hold a second copy, and the adapter's side is
        # refused here when it was trained on another base model.
        loaded = load_model(replace(settings.llm, adapter=adapter_name), settings.cache_dir,
                            adapters_dir=settings.adapters_dir, shared=False)
        fast_compute_dtype(loaded.model)  # float32 on CPUs that only emulate bfloat16 (see finetune.train)
        options = replace(decode_options(settings.llm, loaded), max_new_tokens=max_new_tokens, temperature=0.0)
        # On the model's own thread, like the answer stage: decoding elsewhere ran ~30 % slower (engine.models).
        sides.append(loaded.submit(evaluate_side, loaded, records, max_seq_length=max_seq_length,
                                   options=options).result())
        tuned_name = loaded.adapter
        del loaded  # one model in memory at a time
    base_side, tuned_side = sides
    return {"n": len(records), "base_loss": round(base_side.loss, 4), "adapter_loss": round(tuned_side.loss, 4),
            "base_ppl": round(base_side.perplexity, 2), "adapter_ppl": round(tuned_side.perplexity, 2),
            "base_score": round(base_side.score, 4), "adapter_score": round(tuned_side.score, 4),
            "base_seconds": round(base_side.seconds, 1), "adapter_seconds": round(tuned_side.seconds, 1),
            **{f"{name}_{key}": round(getattr(side, key), 4) for name, side in (("base", base_side), ("adapter", tuned_side))
               for key in ("correct", "f1", "degenerate")},
            "adapter": tuned_name, "examples": [
                {"question": r.question, "reference": r.output[:200], "base": b[:200], "adapter": a[:200]}
                for r, b, a in zip(records[:3], base_side.answers, tuned_side.answers)]}


def format_table(result: dict) -> str:
    rows = [("", "base", "base+adapter"),
            ("answer loss", f"{result['base_loss']:.4f}", f"{result['adapter_loss']:.4f}"),
            ("perplexity", f"{result['base_ppl']:.2f}", f"{result['adapter_ppl']:.2f}"),
            ("4-gram recall", f"{result['base_score']:.4f}", f"{result['adapter_score']:.4f}"),
            ("answered", f"{result['base_correct']:.4f}", f"{result['adapter_correct']:.4f}"),
            ("char F1", f"{result['base_f1']:.4f}", f"{result['adapter_f1']:.4f}"),
            ("degenerate", f"{result['base_degenerate']:.4f}", f"{result['adapter_degenerate']:.4f}"),
            ("seconds", f"{result['base_seconds']}", f"{result['adapter_seconds']}")]
    return "\n".join(f"{a:<16}{b:>12}{c:>16}" for a, b, c in rows) + f"\n(n = {result['n']} held-out pairs)"


def summary_line(result: dict) -> str:
    keys = ("n", "base_loss", "adapter_loss", "base_score", "adapter_score", "base_ppl", "adapter_ppl",
            "base_correct", "adapter_correct", "base_f1", "adapter_f1", "base_degenerate", "adapter_degenerate")
    return json.dumps({k: result[k] for k in keys})
