"""Checks on a generated answer before it is shown: is it degenerate, and is what it claims in the passages?

The answer stage runs them on every answer and the answer harness (``llm.eval``) counts what they find, so the
app shows exactly what the harness measured. All of them compare text after ``fold``: NFKC, lower case, no
whitespace, Chinese numerals as digits, so "十五日" in a passage supports "15日" in an answer.

>>> fold("第 二十二 条：百分之十、三千五百元，二〇二三年")
'第22条:10%、3500元,2023年'
>>> degenerate_reason("原告支出了1000元[编号]。", "原告支出了多少钱？")
'placeholder'
>>> degenerate_reason("供应商应当具有良好的商业信誉[1]。", "供应商要什么条件？") is None
True
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from kbcore.text import NUMERALS, NUMERAL_VALUES

_SPACE = re.compile(r"\s+")
_DIGIT = {c: v for c, v in NUMERAL_VALUES.items() if v < 10}
_UNIT = {c: v for c, v in NUMERAL_VALUES.items() if v >= 10}
_BIG = {"万": 10_000, "亿": 100_000_000}
# A run of Chinese numerals: either a positional number (三千五百, 二十二, 十) or a digit-by-digit year (二〇二三).
_NUMERAL_RUN = re.compile(f"[{NUMERALS}万亿]+")
_PERCENT = re.compile(rf"([百千])分之([{NUMERALS}]+|\d+(?:\.\d+)?)")
_DAYS = re.compile(r"(\d)天")


def _numeral_value(run: str) -> int | None:
    """The value of a Chinese numeral, or None when the run is not one number (e.g. "一一")."""
    if all(c in _DIGIT for c in run):  # digit by digit: 二〇二三
        return int("".join(str(_DIGIT[c]) for c in run)) if len(run) > 1 else _DIGIT[run]
    total = section = digit = 0
    last_unit = 10 ** 12
    for c in run:
        if c in _DIGIT:
            if digit:  # two digits in a row inside a positional number
                return None
            digit = _DIGIT[c] or 0
            if _DIGIT[c] == 0:
                digit = 0
        elif c in _UNIT:
            unit = _UNIT[c]
            if unit >= last_unit:
                return None
            section += (digit or 1) * unit
            digit, last_unit = 0, unit
        else:  # 万 / 亿
            total = (total + section + digit) * _BIG[c]
            section = digit = 0
            last_unit = 10 ** 12
    return total + section + digit


def _numerals_to_digits(text: str) -> str:
    def replace(match: re.Match) -> str:
        value = _numeral_value(match.group())
        return match.group() if value is None else str(value)

    text = _PERCENT.sub(lambda m: _NUMERAL_RUN.sub(replace, m.group(2)) + ("%" if m.group(1) == "百" else "‰"), text)
    return _DAYS.sub(r"\1日", _NUMERAL_RUN.sub(replace, text))


def fold(text: str) -> str:
    """The form answers and passages are compared in (see the module docstring).

    >>> fold("十日内"), fold("两个月"), fold("一万二千元"), fold("统一"), fold("千分之五"), fold("20天")
    ('10日内', '2个月', '12000元', '统1', '5‰', '20日')
    """
    return _numerals_to_digits(_SPACE.sub("", unicodedata.normalize("NFKC", text).lower()))


# ------------------------------------------------------------------ degenerate output
# Labels the prompt uses and small models copy instead of content: a placeholder, a passage label, a source line.
_PLACEHOLDER = re.compile(r"[\[【［]\s*(编号|序号|数字|n|number|x)\s*[\]】］]|资料\s*[0-9０-９]|（来源|来源[：:]|"
                          r"passage\s*\d", re.IGNORECASE)
_MARKERS = re.compile(r"[\[【［]\s*\d+(?:\s*[,，、\-–]\s*\d+)*\s*[\]】］]")
_ENUMERATION = re.compile(r"[（(]\s*\d{1,2}\s*[)）]|(?<![\d.])\d{1,2}[.、](?!\d)")
_PUNCT = re.compile(r"[\W_]+")
# A piece of 4-40 characters said three times in a row, or a sentence said three times anywhere.
_REPEAT = re.compile(r"(.{4,40}?)\1\1", re.DOTALL)
_REPEAT_RUN = re.compile(r"(.{2,60}?)(?:\s*\1){2,}", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def content_of(text: str) -> str:
    """The answer's words: citation markers, list numbering and punctuation removed.

    >>> content_of("甲[1]，乙（2）[2]。")
    '甲乙'
    """
    return _PUNCT.sub("", _ENUMERATION.sub("", _MARKERS.sub("", unicodedata.normalize("NFKC", text))))


def is_loop(text: str) -> bool:
    """A repetition loop: a short piece three times in a row, or one sentence three times.

    >>> is_loop("被告应当支付租金。" * 3), is_loop("（1）有营业执照；（2）有财务制度；（3）有设备。")
    (True, False)
    """
    if _REPEAT.search(text):
        return True
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= 4]
    return any(sentences.count(s) >= 3 for s in set(sentences))


def trim_loop(text: str) -> str:
    """``text`` with each piece said three or more times in a row said once.

    >>> trim_loop("受理费650元。1. 2. 1. 2. 1. 2. 1. 2.")
    '受理费650元。1. 2.'
    """
    return _REPEAT_RUN.sub(r"\1", text).strip()


def degenerate_reason(text: str, question: str, sources: Sequence[str] = ()) -> str | None:
    """Why ``text`` is no answer to ``question``, or None: "empty", "placeholder" (a prompt label or one of the
    passages' file names copied), "echo" (the question said back), "label_list" (passage numbers with little
    between them), "loop" (the same words over and over).

    >>> degenerate_reason("原告签订过合同1（1）[1]、合同2（2）[2]、合同3（3）[3]。", "原告签了什么？")
    'label_list'
    >>> degenerate_reason("被告借了多少钱？[1]", "被告借了多少钱？")
    'echo'
    >>> degenerate_reason("彭文诉谢嘉的租赁纠纷，月租金是7100元。", "彭文诉谢嘉的租赁纠纷，月租金是多少？") is None
    True
    >>> degenerate_reason("见 judgment-03.pdf。", "租金多少？", ["docs/judgment-03.pdf"])
    'placeholder'
    """
    content = content_of(text)
    if not content:
        return "empty"
    if _PLACEHOLDER.search(text):
        return "placeholder"
    lowered = text.lower()
    for source in sources:
        name = source.rsplit("/", 1)[-1].lower()
        stem = name.rsplit(".", 1)[0]
        if name in lowered or (len(stem) >= 4 and stem in lowered):
            return "placeholder"
    markers = len(_MARKERS.findall(text))
    if markers >= 3 and len(content) < 6 * markers:
        return "label_list"
    asked = content_of(question)
    if asked and (content in asked or len(bigrams(content) - bigrams(asked)) < 3):
        return "echo"
    if is_loop(text):
        return "loop"
    return None


# ------------------------------------------------------------------ grounding
# Numbers are the claims a small model most often gets from the wrong passage (amounts, days, dates).
# With its unit when it has one: "3个月" is not supported by a passage's "第3条".
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:%|‰|个?工作日|个?月|[日年元人名项次倍家岁])?")


def unsupported_numbers(text: str, passages: Sequence[str], question: str = "") -> list[str]:
    """The numbers in ``text`` that neither the passages nor the question contain (after ``fold``); citation
    markers do not count.

    >>> unsupported_numbers("借款12000元，期限十二个月[1]。", ["借款一万二千元，期限12个月。"])
    []
    >>> unsupported_numbers("受理费1070元[1]。", ["案件受理费650元。"])
    ['1070元']
    >>> unsupported_numbers("最长暂停三个月[1]。", ["第三条 暂停时间最长不得超过三十日。"])
    ['3个月']
    >>> unsupported_numbers("自2021年7月1日起施行。", ["本办法自二〇二一年七月一日起施行。"])
    []
    """
    seen = fold(question) + "\n" + "\n".join(fold(p) for p in passages)
    # "12" is not in "120", but "2021年" is in "2021年7月": only a bare number may not run on into digits.
    return [n for n in numbers_in(text)
            if not re.search(rf"(?<![\d.]){re.escape(n)}" + (r"(?![\d])" if n[-1].isdigit() else ""), seen)]


def numbers_in(text: str) -> list[str]:
    """The numbers ``text`` states, folded, citation markers left out.

    >>> numbers_in("保证金不超过百分之二，十五日内、三个月内，第3条[1]。")
    ['2%', '15日', '3个月', '3']
    """
    return list(dict.fromkeys(_NUMBER.findall(fold(_MARKERS.sub("", text)))))


def support(text: str, passages: Sequence[str], question: str = "") -> float:
    """Share of the answer's character bigrams found in the passages or the question (1.0 for a verbatim copy).

    >>> support("供应商应当具有良好的商业信誉。", ["第二十二条 供应商应当具有良好的商业信誉"])
    1.0
    """
    grams = bigrams(content_of(text))
    if not grams:
        return 0.0
    seen = bigrams(content_of(question)).union(*(bigrams(content_of(p)) for p in passages))
    return len(grams & seen) / len(grams)


def bigrams(text: str) -> set[str]:
    text = fold(text)
    return {text[i:i + 2] for i in range(len(text) - 1)}
