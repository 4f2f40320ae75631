"""The grounded prompt: the passages (each under a line that says which document it is from), the question, and
what a good answer looks like. Training uses the same builder.

Passages carry no numbers or file names: the 0.5B copied whatever label the prompt gave them ("[编号]",
"资料1（来源：…）", a file name) into its answer instead of the fact. Citations are attributed afterwards, from
what the answer says (``llm.citations.attribute``).

>>> from kbcore.types import Chunk, Hit
>>> hit = Hit(Chunk(7, 1, "zhengfu-caigou-fa.pdf", 3, 2, 2, "政府采购法 > 第二章", "第二十二条 供应商……"), 0.9)
>>> messages = build_messages("供应商要具备什么条件？", [hit])
>>> print(messages[1]["content"])
资料：
【政府采购法 > 第二章】
第二十二条 供应商……
<BLANKLINE>
问题：供应商要具备什么条件？
请直接用完整的句子回答问题的内容。
"""

from __future__ import annotations

import re
from typing import Sequence

from kbcore.text import CJK_IDEOGRAPHS
from kbcore.types import Hit

NOT_FOUND = {"zh": "文档中没有找到相关内容。", "en": "The documents do not contain an answer to this question."}
# Follows NOT_FOUND when the question names something no document mentions (llm.passages.asked_names).
UNMENTIONED = {"zh": "文档中没有提到：{names}。", "en": "The documents never mention: {names}."}
# Opens an answer that quotes a passage because the model's own answer was unusable (llm.checks).
QUOTED = {"zh": "资料原文：", "en": "From the documents: "}

SYSTEM = {
    "zh": ("你是一个严谨的知识库问答助手。请根据下面的资料回答用户的问题，用简体中文作答，简洁准确。先直接回答问题，"
           f"再补充要点。如果资料里没有答案，就只回答：{NOT_FOUND['zh']}"),
    "en": ("You are a careful assistant answering from a knowledge base. Answer the user's question from the "
           "passages below, briefly and precisely, in English: the answer first, then the points that support it. "
           f"If the passages do not contain the answer, reply only: {NOT_FOUND['en']}"),
}
LABELS = {"zh": ("资料：", "问题："), "en": ("Passages:", "Question: ")}
# Said last, right before the model answers: small models follow the final instruction far better than the
# system prompt. A full sentence restates what is asked before the fact, and the 0.5B copied the right
# number far more often after those words than as a bare reply (llm.eval on the look-alike judgments).
ANSWER_RULE = {"zh": "请直接用完整的句子回答问题的内容。",
               "en": "Answer the question itself in full sentences."}

_CJK = re.compile(f"[{CJK_IDEOGRAPHS}]")


def language_of(text: str) -> str:
    """"zh" when the text has any Chinese character, else "en"."""
    return "zh" if _CJK.search(text or "") else "en"


def format_passage(hit: Hit, text: str | None = None) -> str:
    """A passage under a line naming its document: the heading path and, for look-alike documents, the
    identity block (case number, parties) that tells this one from its twins (``Hit.opening``)."""
    title = " ".join(part for part in (hit.heading, hit.opening.replace("\n", " ")) if part)
    body = text if text is not None else hit.text
    return f"【{title}】\n{body}" if title else body


def build_messages(question: str, passages: Sequence[Hit], history: Sequence[dict] | None = None,
                   passage_texts: Sequence[str] | None = None) -> list[dict]:
    """Chat messages for the model. ``passage_texts`` overrides the passages' text (after trimming)."""
    language = language_of(question)
    heading, ask = LABELS[language]
    texts = passage_texts if passage_texts is not None else [h.text for h in passages]
    body = "\n\n".join(format_passage(h, t) for h, t in zip(passages, texts))
    messages = [{"role": "system", "content": SYSTEM[language]}]
    messages += [{"role": m["role"], "content": m["content"]} for m in (history or [])]
    messages.append({"role": "user", "content": f"{heading}\n{body}\n\n{ask}{question}\n{ANSWER_RULE[language]}"})
    return messages


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt string the model sees, through its own chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
