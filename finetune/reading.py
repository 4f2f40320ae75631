"""Grounded-reading pairs from any knowledge base, for an adapter that reads what retrieval found.

For a sentence of a stored passage that states a fact (a number, a date, a name, a condition), the local model
writes the question a user would ask; the question is kept only when it neither copies the sentence nor drifts
from it and retrieval, asked it, shows the sentence's passage. The answer is the sentence itself, in the
documents' words, so the adapter learns to find the one sentence that answers among look-alike passages and to
state it whole, qualifiers included ("30%以上", not "30%"). The passages are exactly what the answer stage would
show for the question. Some questions are asked again with the answering passage taken away (its neighbours from
the same document stay) and "not found" as the answer: the near misses a threshold on relevance cannot refuse.

>>> fact_sentences("第六十二条 本办法自2014年2月1日起施行。\\n第一章 总则\\n其他说明。")
['本办法自2014年2月1日起施行。']
>>> usable_question("本办法从哪一天开始施行？", "本办法自2014年2月1日起施行。")
True
>>> usable_question("本办法自2014年2月1日起施行吗？", "本办法自2014年2月1日起施行。")  # gives the answer away
False
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Callable

from finetune.data import Passage, Record
from kbcore.text import HEADING_SEPARATOR, NUMERALS
from llm.checks import bigrams, content_of, numbers_in

# A sentence ends at 。！？；; its article number or list marker is not part of what it says.
_SENTENCE = re.compile(r"[^。！？；\n]+[。！？；]")
_LEAD = re.compile(rf"^\s*(?:第[{NUMERALS}\d]+[条款项章节]\s*|[（(][{NUMERALS}\d]+[）)]\s*|\d+(?:\.\d+)*\s+)")
_FACT = re.compile(rf"\d|[{NUMERALS}万]+[日天年月个条次名人元%]|是指|包括|应当|不得|必须|由.{{1,12}}负责|称为|叫做")
QUESTION_SYSTEM = "你负责为知识库问答系统出题：读一句话，写出用户为了得到这句话里的信息会提的问题。"
# One worked example: without it the 0.5B mostly copied the sentence back or asked something else.
QUESTION_EXAMPLE = ("句子：采购人与中标供应商应当在中标通知书发出之日起三十日内签订政府采购合同。",
                    "问题：中标通知书发出后，采购人最晚要在多少天内和中标供应商签合同？")
QUESTION_ASK = "文档：《{title}》\n句子：{sentence}"


def fact_sentences(text: str, shortest: int = 12, longest: int = 120) -> list[str]:
    """Sentences of ``text`` that state a fact a question can ask for, without their article number."""
    out = []
    for raw in _SENTENCE.findall(text):
        sentence = _LEAD.sub("", raw.strip())
        if shortest <= len(content_of(sentence)) <= longest and _FACT.search(sentence):
            out.append(sentence)
    return out


def usable_question(question: str, sentence: str) -> bool:
    """A question worth training on: one question, about the sentence, that does not hold its answer."""
    question = question.strip()
    if not (6 <= len(question) <= 60) or question[-1] not in "？?" or question.count("？") + question.count("?") > 1:
        return False
    if re.search(r"这句话|句子|资料|文档|上述|该句", question):
        return False
    asked, stated = bigrams(content_of(question)), bigrams(content_of(sentence))
    if not asked or len(asked & stated) / len(asked) < 0.3:  # not about this sentence
        return False
    given = set(numbers_in(question))
    # The sentence must add something: its numbers, or over half of its words, are not in the question.
    return bool(set(numbers_in(sentence)) - given) or len(stated - asked) / max(len(stated), 1) > 0.5


def _passage(hit) -> Passage:
    return Passage(hit.source, hit.pages[0], hit.pages[-1], hit.heading, hit.text)


def build_reading_pairs(answerer, write_question: Callable[[str], str], *, count: int, refusal_ratio: float = 0.2,
                        seed: int = 42, log: Callable[[str], None] | None = None) -> list[Record]:
    """Up to ``count`` answerable records (and ``refusal_ratio`` as many refusals) from ``answerer``'s
    knowledge base. ``write_question(prompt)`` is the local model; ``answerer.prepare`` picks the passages."""
    kb = answerer.retriever.kb
    rng = random.Random(seed)
    candidates = [(c, sentences) for c in kb.chunks() if (sentences := fact_sentences(c.text))]
    rng.shuffle(candidates)
    records: list[Record] = []
    refusals: list[Record] = []
    tried = 0
    for chunk, sentences in candidates:
        if len(records) >= count:
            break
        sentence = rng.choice(sentences)
        title = chunk.heading.split(HEADING_SEPARATOR)[0]
        tried += 1
        written = write_question(QUESTION_ASK.format(title=title, sentence=sentence)).strip().splitlines()
        question = written[0].strip() if written else ""
        if not usable_question(question, sentence):
            continue
        prepared = answerer.prepare(question)
        if prepared.prompt is None or not any(sentence in h.text for h in prepared.passages):
            continue  # retrieval does not show the answer: not a reading lesson
        passages = tuple(_passage(h) for h in prepared.passages)
        records.append(Record(question, "", sentence, passages, f"kb:{chunk.source}:{chunk.page_start}"))
        if log:
            log(f"{len(records)}/{count} ({tried} tried) {question} -> {sentence[:40]}")
        if rng.random() < refusal_ratio:
            refusal = _without_answer(answerer, question, sentence, chunk)
            if refusal is not None:
                refusals.append(refusal)
    out = records + refusals
    rng.shuffle(out)
    return out


def _without_answer(answerer, question: str, sentence: str, chunk) -> Record | None:
    """The question with what retrieval shows less every passage holding the answer: a near miss to refuse."""
    from llm.prompts import NOT_FOUND

    hits = answerer.retriever.search(question, answerer.settings.retrieval.top_k + 3)
    facts = set(numbers_in(sentence)) or bigrams(content_of(sentence))
    kept = [h for h in hits if not facts <= set(numbers_in(h.text)) | bigrams(content_of(h.text))]
    kept = kept[: answerer.settings.llm.max_passages]
    if not kept:
        return None
    return Record(question, "", NOT_FOUND["zh"], tuple(_passage(h) for h in kept),
                  f"kb-refusal:{chunk.source}:{chunk.page_start}")


def write_questions_with(answerer, max_new_tokens: int = 48) -> Callable[[str], str]:
    """The local model as a question writer: greedy, short, the answer stage's loop guards."""
    from llm.prompts import render_prompt

    options = replace(answerer.decode_options(), max_new_tokens=max_new_tokens, banned_first=())
    tokenizer = answerer.loaded.tokenizer

    def write(ask: str) -> str:
        messages = [{"role": "system", "content": QUESTION_SYSTEM},
                    {"role": "user", "content": QUESTION_EXAMPLE[0]}, {"role": "assistant", "content": QUESTION_EXAMPLE[1]},
                    {"role": "user", "content": ask}]
        text = "".join(answerer.generate(render_prompt(tokenizer, messages), options)).strip()
        return text.removeprefix("问题：").removeprefix("问题:").strip()

    return write

