"""The grounded prompt: numbered passages, the question, and how to cite. Training uses the same builder.

>>> from kbcore.types import Chunk, Hit
>>> hit = Hit(Chunk(7, 1, "zhengfu-caigou-fa.pdf", 3, 2, 2, "政府采购法 > 第二章", "第二十二条 供应商……"), 0.9)
>>> messages = build_messages("供应商要具备什么条件？", [hit])
>>> print(messages[1]["content"])
资料：
资料1（来源：zhengfu-caigou-fa.pdf，第 2 页，政府采购法 > 第二章）
第二十二条 供应商……
<BLANKLINE>
问题：供应商要具备什么条件？
请直接用完整的句子回答问题的内容（不要只写资料编号或来源），并在句末用 [编号] 标注依据的资料。
"""

from __future__ import annotations

import re
from typing import Sequence

from kbcore.types import Hit

NOT_FOUND = {"zh": "文档中没有找到相关内容。", "en": "The documents do not contain an answer to this question."}

SYSTEM = {
    "zh": ("你是一个严谨的知识库问答助手。请根据下面编号的资料回答用户的问题，用简体中文作答，简洁准确。"
           "在句末用方括号写出所依据资料的编号，例如：供应商应当具有良好的商业信誉[1]。先直接回答问题，再补充要点。"
           "方括号只用于标注资料编号，列举时请用（1）（2）或 1. 2. 编号。"
           f"如果资料里没有答案，就只回答：{NOT_FOUND['zh']}"),
    "en": ("You are a careful assistant answering from a knowledge base. Answer the user's question from the "
           "numbered passages below, briefly and precisely, in English. End each sentence with the number of the "
           "passage it comes from in square brackets, e.g. 'Suppliers need a good business reputation [1].' Use "
           f"square brackets only for passage numbers. If the passages do not contain the answer, reply only: {NOT_FOUND['en']}"),
}
LABELS = {"zh": ("资料：", "问题：", "资料{n}（来源：{source}，第 {pages} 页{heading}）"),
          "en": ("Passages:", "Question: ", "Passage {n} (source: {source}, p. {pages}{heading})")}
# Said last, right before the model answers: small models follow the final instruction far better than the
# system prompt, and without it the 0.5B answered with a passage's label instead of its content.
ANSWER_RULE = {"zh": "请直接用完整的句子回答问题的内容（不要只写资料编号或来源），并在句末用 [编号] 标注依据的资料。",
               "en": "Answer the question itself in full sentences (not just a passage number or source), "
                     "ending each sentence with the [number] of the passage it comes from."}

_CJK = re.compile(r"[\u3400-\u9fff]")


def language_of(text: str) -> str:
    """"zh" when the text has any Chinese character, else "en"."""
    return "zh" if _CJK.search(text or "") else "en"


def page_label(pages: Sequence[int]) -> str:
    return f"{pages[0]}" if len(pages) == 1 else f"{pages[0]}-{pages[-1]}"


def format_passage(number: int, hit: Hit, language: str, text: str | None = None) -> str:
    # The passage's own label avoids the [n] form: small models copy a "[1] file p. 2" header as their answer.
    heading = f"，{hit.heading}" if hit.heading and language == "zh" else (f", {hit.heading}" if hit.heading else "")
    label = LABELS[language][2].format(n=number, source=hit.source, pages=page_label(hit.pages), heading=heading)
    return f"{label}\n{text if text is not None else hit.text}"


def distinct_passages(hits: Sequence[Hit]) -> list[Hit]:
    """The hits to show the model, best first, less those whose own chunk an earlier passage already shows.

    A hit widened with its neighbours (``RetrievalSettings.min_context_chars``) often takes in another hit: on
    ../shared/eval 55-71% of questions had one, 15-21% of the passages' characters. Shown twice, the same text
    costs prompt tokens and splits the answer's citations between two numbers.

    >>> from kbcore.types import Chunk, Hit
    >>> article = lambda i, text: Chunk(i, 1, "fa.pdf", i, 2, 2, "法", text)
    >>> wide = Hit(article(1, "第一条 甲。"), 0.9, context="第一条 甲。第二条 乙。")
    >>> [h.chunk.id for h in distinct_passages([wide, Hit(article(2, "第二条 乙。"), 0.8), Hit(article(5, "第五条 戊。"), 0.7)])]
    [1, 5]
    """
    shown: list[Hit] = []
    for hit in hits:
        if not any(hit.source == earlier.source and hit.chunk.text in earlier.text for earlier in shown):
            shown.append(hit)
    return shown


def build_messages(question: str, passages: Sequence[Hit], history: Sequence[dict] | None = None,
                   passage_texts: Sequence[str] | None = None) -> list[dict]:
    """Chat messages for the model. ``passage_texts`` overrides the passages' text (after trimming)."""
    language = language_of(question)
    heading, ask, _ = LABELS[language]
    texts = passage_texts if passage_texts is not None else [h.text for h in passages]
    body = "\n\n".join(format_passage(i, h, language, t) for i, (h, t) in enumerate(zip(passages, texts), start=1))
    messages = [{"role": "system", "content": SYSTEM[language]}]
    messages += [{"role": m["role"], "content": m["content"]} for m in (history or [])]
    messages.append({"role": "user", "content": f"{heading}\n{body}\n\n{ask}{question}\n{ANSWER_RULE[language]}"})
    return messages


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt string the model sees, through its own chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
