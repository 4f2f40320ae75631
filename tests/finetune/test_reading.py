"""Reading pairs built from the real development knowledge base, with a stand-in question writer."""

import re

import pytest

from finetune.data import read_jsonl, write_jsonl
from finetune.reading import build_reading_pairs
from llm.answerer import Answerer
from llm.prompts import NOT_FOUND

pytestmark = pytest.mark.slow


def ask_for_first_number(prompt: str) -> str:
    """What a question writer does, deterministically: the sentence, with its first number asked for."""
    sentence = prompt.split("句子：", 1)[1].strip().rstrip("。；")
    return re.sub(r"[0-9一二三四五六七八九十百千]+", "多少", sentence, count=1) + "？"


class MissingEveryOther:
    """The real retriever, but for questions of odd length it misses the passage they were written from."""

    def __init__(self, retriever):
        self.retriever, self.kb = retriever, retriever.kb

    def search(self, question, k=None, **kw):
        hits = self.retriever.search(question, k, **kw)
        written_from = re.compile(re.escape(question.rstrip("？")).replace("多少", ".+?"))
        return [h for h in hits if not written_from.search(h.text)] if len(question) % 2 else hits


def test_reading_pairs_answer_from_a_shown_passage_and_refuse_near_misses(settings, eval_retriever, tiny_model_dir,
                                                                          tmp_path):
    tiny = settings.with_overrides(llm={"model": str(tiny_model_dir), "quantization": "fp32"})
    retriever = MissingEveryOther(eval_retriever)
    records = build_reading_pairs(Answerer(tiny, retriever), ask_for_first_number, count=12,
                                  refusal_ratio=1.0, seed=3)
    answers = [r for r in records if not r.origin.startswith("kb-refusal")]
    refusals = [r for r in records if r.origin.startswith("kb-refusal")]
    assert len(answers) == 12 and refusals
    for r in answers:
        # The answer is a sentence of one of the passages the answer stage shows, and the question asks for it.
        assert any(r.output in p.text for p in r.passages), r
        assert "多少" in r.question and r.output not in r.question
        assert 1 <= len(r.passages) <= tiny.llm.max_passages
    by_question = {r.question: r for r in answers}
    for r in refusals:
        assert r.output == NOT_FOUND["zh"]
        answered = by_question[r.question]
        # The same question, with every passage that holds its answer taken away.
        assert not any(answered.output in p.text for p in r.passages)
    write_jsonl(records, tmp_path / "pairs.jsonl")  # what build-data writes, train reads back
    assert len(read_jsonl(tmp_path / "pairs.jsonl", strict=True).records) == len(records)
