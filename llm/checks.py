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
_NUMERAL_RUN = re.compile(rf"(\d+(?:\.\d+)?)?([{NUMERALS}万亿]+)")
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
        digits, run = match.group(1), match.group(2)
        if set(run) <= set(_BIG):  # "200万" / "1.5亿": digits times the unit, or a lone 万 left as it is
            if not digits:
                return run
            value = float(digits)
            for c in run:
                value *= _BIG[c]
            return str(int(value)) if value == int(value) else match.group()
        lead = "" if digits else run[:len(run) - len(run.lstrip("万亿"))]  # "万一" is no number of ten thousands
        run = run[len(lead):]
        value = _numeral_value(run)
        return (digits or lead) + (run if value is None else str(value))

    text = _PERCENT.sub(lambda m: _NUMERAL_RUN.sub(replace, m.group(2)) + ("%" if m.group(1) == "百" else "‰"), text)
    return _DAYS.sub(r"\1日", _NUMERAL_RUN.sub(replace, text))


def fold(text: str) -> str:
    """The form answers and passages are compared in (see the module docstring).

    >>> fold("十日内"), fold("两个月"), fold("一万二千元"), fold("统一"), fold("千分之五"), fold("20天")
    ('10日内', '2个月', '12000元', '统1', '5‰', '20日')
    >>> fold("二百万元"), fold("200万元"), fold("1.5万元"), fold("万一")
    ('2000000元', '2000000元', '15000元', '万1')
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


def without_restatements(text: str, question: str, instructions: Sequence[str] = ()) -> str:
    """``text`` less the sentences that ask the question back (a question mark, and nearly all its words the
    question's) or say the prompt's own instructions: the 0.5B opened answers with the question and closed them
    with the prompt's last line. What is left is the answer to check.

    >>> without_restatements("Debian 软件包有哪些优先级[1]？有必需、重要和标准[2]。", "Debian 软件包有哪些优先级？")
    '有必需、重要和标准[2]。'
    >>> without_restatements("要写 Closes: #123[1]。请直接用完整的句子回答问题的内容。", "写什么能关闭 bug？",
    ...                      ["请直接用完整的句子回答问题的内容。"])
    '要写 Closes: #123[1]。'
    >>> without_restatements("可以。这样做对吗？对。", "可以分两阶段招标吗？")
    '可以。这样做对吗？对。'
    >>> without_restatements("It is free software.\\nAnswer the question itself.", "Is it free?",
    ...                      ["Answer the question itself in full sentences."])
    'It is free software.'
    >>> without_restatements("It is free software.", "Is it free?", ["Answer the question from the passages."])
    'It is free software.'
    """
    asked, said = bigrams(content_of(question)), [fold(content_of(i)) for i in instructions]

    def restates(sentence: str) -> bool:
        grams = bigrams(content_of(sentence))
        if len(grams) < 3:
            return False
        if sentence.rstrip().endswith(("？", "?")) and len(grams & asked) >= 0.8 * len(grams):
            return True
        # Word for word: English letter pairs are few, and most sentences share most of them with any instruction.
        return any(fold(content_of(sentence)) in instruction for instruction in said)

    return "".join(s for s in _SENTENCE_END.split(text) if not restates(s)).strip()


# ------------------------------------------------------------------ the quantity asked
# What a question asks for when it asks for a quantity, and what a sentence must state to give it: "多少投诉费"
# wants money, and a sentence giving "十五个工作日" answers something else. The first pattern that matches decides.
_ASKED_KINDS = (
    ("date", r"哪一?天|哪一?年|何时|什么时候|(?:施行|生效|实施)?日期|when\b"),
    # "合同金额的多少" asks for a share of it.
    ("percent", r"百分之几|比例|比重|费率|多少\s*[%％]|的多少|what percentage"),
    ("money", r"多少(?:万|亿)?元|多少钱|罚款|[费价]用?[是为]?多少|多少[^，。？?]{0,3}费|多少金额|金额[^，。？?]{0,3}多少|"
              r"预算多少|how much"),
    ("people", r"多少(?:个)?人|几(?:个)?人|[几多少]+名|人数"),
    ("size", r"多少\s*(?:[KMGT]B|[KMGT]iB|兆|字节)"),
    ("time", r"多少(?:个)?(?:工作日|天|日|月|年|小时|分钟|周)|几(?:个)?(?:工作日|天|日|月|年|小时|周)|多久|多长时间|多长|期限|"
             r"多大年龄|how long"),
    ("count", r"(?<![哪好])几|多少|多大|how many"),
)
_ASKED = [(kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in _ASKED_KINDS]
# The units that give each kind, after ``fold`` (Chinese numerals as digits, 天 as 日).
_UNITS_OF = {
    # An event can be the date: "自印发之日起", "届满之日", "截止时间10日前".
    "date": r"\d{4}年|\d{1,2}月\d{1,2}日|之日|\d+(?:个)?(?:工作)?日[前内后]",
    "percent": r"\d+(?:\.\d+)?[%‰]|\d成|\d分之\d",
    "money": r"\d+(?:\.\d+)?(?:万|亿)?元",
    "people": r"\d+(?:个)?[人名]",
    "size": r"\d+(?:\.\d+)?(?:[kmgt]i?b|兆|字节)",
    "time": r"\d+(?:\.\d+)?(?:个)?(?:工作日|日|月|年|小时|分钟|周|星期|岁)",
}
# Any quantity: a number with a unit or measure word, or written in Arabic digits. A bare Chinese numeral is
# usually a word ("一开始", "统一"), and a leading "2.6." numbers a section.
_ANY_UNIT = (r"\d+(?:\.\d+)?(?:%|‰|个|工作日|日|月|年|元|万|亿|人|名|项|次|倍|家|岁|种|条|位|份|字|小时|分钟|周|"
             r"[kmgt]i?b)")
_SECTION_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)+\.?")
# "一个其他的发行版", "一种方法": 一 before a measure word is mostly "a", not a count.
_ARTICLE_ONE = re.compile(rf"(?<![{NUMERALS}\d])一(?=[个种项次位份条家些])")
# "第二十二条" numbers an article; it answers no "how many".
_ORDINAL = re.compile(rf"第[{NUMERALS}\d]+[编章节条款项]")


def asked_quantity(question: str) -> str | None:
    """The kind of quantity a question asks for ("date", "percent", "money", "people", "size", "time", or
    "count" for any number), or None when it asks for none.

    >>> [asked_quantity(q) for q in ("投诉需要交多少投诉费？", "最长可以暂停多久？", "淘汰比例不得低于多少？",
    ...                              "哪几类项目必须招标？", "法律从哪一天起施行？", "至少要几人？", "最少要多少天？")]
    ['money', 'time', 'percent', None, 'date', 'people', 'time']
    """
    for kind, pattern in _ASKED:
        if pattern.search(question):
            return kind
    return None


def states_quantity(sentence: str, kind: str) -> bool:
    """Whether ``sentence`` states a quantity of ``kind`` (``asked_quantity``); article numbers and citation
    markers do not count.

    >>> states_quantity("可以在答复期满后十五个工作日内投诉。", "money"), states_quantity("罚款二万元。", "money")
    (False, True)
    >>> states_quantity("您最好从一开始就安装 Debian。", "count"), states_quantity("Linux 有 7 个运行级别。", "count")
    (False, True)
    >>> states_quantity("2.6. 我可以从网站安装 Debian 吗？", "count"), states_quantity("见第二十条[1]。", "count")
    (False, False)
    >>> states_quantity("用户运行一个其他的发行版。", "count"), states_quantity("至少十一个候选人。", "count")
    (False, True)
    """
    if stated_quantities(sentence, kind):
        return True
    # Any number counts as a count, in digits even without a measure word.
    return kind not in _UNITS_OF and bool(re.search(r"[0-9０-９]", _without_labels(sentence)))


def stated_quantities(sentence: str, kind: str) -> list[str]:
    """The quantities of ``kind`` that ``sentence`` states, folded, article numbers and citation markers left out.

    >>> stated_quantities("应当在三十日内订立合同，七个工作日内答复[1]。", "time")
    ['30日', '7个工作日']
    """
    return re.findall(_UNITS_OF.get(kind, _ANY_UNIT), fold(_without_labels(sentence)))


def _without_labels(sentence: str) -> str:
    """The sentence less what numbers no quantity: citation markers, article and section numbers, "一个" as "a"."""
    return _ARTICLE_ONE.sub("", _SECTION_NUMBER.sub("", _ORDINAL.sub("", _MARKERS.sub("", sentence))))


# "哪些条件", "哪几种", "什么情况下", "有什么要求": the answer is a list, and every item of it is asked for.
_ASKS_LIST = re.compile(r"哪些|哪几|什么(?:条件|情况|情形|要求|材料|内容)|包括什么")


def asks_for_list(question: str) -> bool:
    """Whether a Chinese question asks for the items of a list.

    >>> asks_for_list("供应商要具备哪些条件？"), asks_for_list("什么情况下可以不招标？"), asks_for_list("要在几天内答复？")
    (True, True, False)
    """
    return bool(_ASKS_LIST.search(question))


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
    return [n for n in numbers_in(text) if not holds_number(seen, n)]


# Latin-script terms (commands, packages, names) are claims as much as numbers are: the 0.5B spelled out an
# acronym in words no passage holds. A code fence's language tag ("```bash") is formatting, not a claim.
_LATIN_TERM = re.compile(r"(?<![A-Za-z0-9`])[A-Za-z][A-Za-z0-9]*(?:[._+-][A-Za-z0-9]+)*")


def unsupported_terms(text: str, passages: Sequence[str], question: str = "") -> list[str]:
    """The Latin-script words of three or more characters in ``text`` that neither the passages nor the question
    hold (after ``fold``).

    >>> unsupported_terms("FTBFS 的全称是 Full Binary Tarball Format。", ["FTBFS：Fails To Build From Source"])
    ['Full', 'Binary', 'Tarball', 'Format']
    >>> unsupported_terms("用 pbuilder：```bash\\nsudo pbuilder create\\n```", ["sudo pbuilder create"])
    []
    """
    seen = fold(question) + "\n" + "\n".join(fold(p) for p in passages)
    return list(dict.fromkeys(w for w in _LATIN_TERM.findall(text) if len(w) >= 3 and fold(w) not in seen))


def holds_number(folded: str, number: str) -> bool:
    """Whether ``folded`` text holds the folded ``number`` as a whole number: "12" is not in "120", but
    "2021年" is in "2021年7月".

    >>> holds_number("第120条", "12"), holds_number("2021年7月1日", "2021年"), holds_number("投诉12日内", "12")
    (False, True, True)
    """
    return bool(re.search(rf"(?<![\d.]){re.escape(number)}" + (r"(?![\d])" if number[-1].isdigit() else ""), folded))


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
