"""Text helpers shared by ingest (which stores search tokens) and retrieval (which tokenises queries).

The search tokeniser must be the same on both sides, so it lives here, once.

>>> search_tokens("政府采购的供应商应当具备哪些条件？")[:4]
['政府', '采购', '供应', '供应商']
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

# Bump when search_tokens changes: knowledge bases record it and retrieval re-tokenises older ones.
TOKENIZER_VERSION = "jieba-search+bigrams-2"

# Joins the levels of a chunk's heading path: "中华人民共和国政府采购法 > 第二章 政府采购当事人".
HEADING_SEPARATOR = " > "
# The one definition of the script and the numerals the pipeline looks for.
# Han ideographs (extension A, unified, compatibility): what Chinese words are made of.
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# All that sets like Chinese text: radicals, CJK punctuation, kana, the ideographs, full-width forms.
CJK_TEXT = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff" + CJK_IDEOGRAPHS + "\uff00-\uffef"
# Chinese numerals and their values: the digits (〇 and 两 are variants) and the units below 万.
NUMERAL_VALUES = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
                  "九": 9, "十": 10, "百": 100, "千": 1000}
NUMERALS = "".join(NUMERAL_VALUES)  # for character classes: 第[{NUMERALS}0-9]+条
_WORD = re.compile(rf"[{CJK_IDEOGRAPHS}]+|[a-z0-9]+(?:[._+-][a-z0-9]+)*")
_STOP = frozenset(
    "的 了 和 是 在 与 或 及 等 对 为 由 以 中 其 之 于 而 被 把 也 都 就 并 从 向 上 下 这 那 有 个 吗 呢 啊 吧 么 "
    "什么 哪些 怎么 如何 怎样 是否 可以 应当 应该 需要 一个 哪个 多少 为什么 我 你 他 她 它 我们 你们 a an the of to "
    "in on for is are and or be by with what how which who why does do can".split()
)


def normalize(text: str) -> str:
    """NFKC folds full-width letters, digits and punctuation to half-width, so ＡＢＣ１ matches ABC1."""
    return unicodedata.normalize("NFKC", text).lower()


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def tagged_words(text: str) -> list[tuple[str, str]]:
    """jieba's words of ``text`` with their part-of-speech tags (``ns`` place, ``nt`` organisation, ...)."""
    _jieba()
    import jieba.posseg

    return [(w.word, w.flag) for w in jieba.posseg.cut(text)]


def search_tokens(text: str) -> list[str]:
    """Tokens for BM25: on CJK runs jieba's search-engine mode (words and their sub-words) and then every
    character bigram of the run; lower-cased alphanumeric words elsewhere; stop words dropped.

    The bigrams match paraphrases that jieba segments differently (the question's 出席开标 against the text's
    参加开标活动 still share 开标); they lifted BM25 and hybrid retrieval on both dev sets (``python -m
    retrieval.eval`` on ../shared/eval).

    >>> search_tokens("最低限价")
    ['最低', '限价', '最低', '低限', '限价']
    """
    jieba = _jieba()
    out: list[str] = []
    for match in _WORD.finditer(normalize(text)):
        piece = match.group()
        if "\u3400" <= piece[0]:
            out.extend(t for t in jieba.cut_for_search(piece) if t not in _STOP)
            out.extend(b for b in (piece[i:i + 2] for i in range(len(piece) - 1)) if b not in _STOP)
        elif piece not in _STOP:
            out.append(piece)
    return out


def chunk_tokens(heading: str, text: str, opening: str = "") -> str:
    """The search tokens stored for a chunk (space-joined): those of the same ``passage_text`` the embedder
    sees.

    >>> chunk_tokens("政府采购法 > 第二章", "限价").split()[-4:]
    ['第二', '二章', '限价', '限价']
    """
    return " ".join(search_tokens(passage_text(heading, text, opening)))


def passage_text(heading: str, text: str, opening: str = "") -> str:
    """What the embedder and BM25 see for a chunk: the document title and the chunk's own heading, the
    document's ``opening`` (given for every chunk but the first, which holds it), then the chunk's text.

    The title lets the right law win among similar ones; the middle of a long path adds little. The opening
    is for look-alike documents (judgments, contracts, forms from one template): the passage that answers
    rarely repeats the parties, case number or issuer that tell its document apart, and without them neither
    embedding nor BM25 can prefer the right document's passage to its twins'.

    >>> passage_text("政府采购法 > 第二章 政府采购当事人", "第十五条 ……")
    '政府采购法 > 第二章 政府采购当事人\\n第十五条 ……'
    >>> passage_text("FAQ > 第 7 章 > 7.1. 什么是软件包？", "正文")
    'FAQ > 7.1. 什么是软件包？\\n正文'
    >>> passage_text("民事判决书", "判决如下：……", opening="（2022）京0105民初39193号 原告：周雨敏")
    '民事判决书\\n（2022）京0105民初39193号 原告：周雨敏\\n判决如下：……'
    """
    parts = heading.split(HEADING_SEPARATOR) if heading else []
    context = HEADING_SEPARATOR.join(parts[:1] + parts[-1:] if len(parts) > 1 else parts)
    return "\n".join(part for part in (context, opening.strip(), text) if part)


# The head of a document is short lines, not sentences (a "label: value" line may end like one).
_HEAD_LINE = re.compile(r"^(?:[^。！？.!?]{1,60}|[^\s：:]{1,8}[：:].{1,52})$")
# Of those, the identity block keeps what names this document: "label: value" lines ("原告：周雨敏，住北京市。",
# "甲方：某某公司") and lines with a number ("（2022）京0105民初39193号", "财库〔2014〕214号"), but no
# copyright or licence notice, which many documents share.
_LABELLED = re.compile(r"^[^\s：:]{1,8}[：:]")
_NUMBERED = re.compile(r"\d{2,}")
_CLAUSE_END = re.compile(r"[，,。；;]")
_NOTICE = re.compile(r"©|\(c\)|版权|copyright|licen[cs]e|许可|all rights reserved", re.IGNORECASE)
# Where a document's body begins: chapters, articles, numbered sections.
_BODY_START = re.compile(rf"^(?:第[{NUMERALS}\d]+[章节条编部篇]|[一二三四五六七八九十]+、|\d+(?:\.\d+)*[.、\s]|chapter\b)",
                         re.IGNORECASE)


def document_opening(first_chunk: str, heading: str, chars: int) -> str:
    """The identity block at the head of a document: of its leading short lines, up to the first line of body
    text, those that name this document (case number, parties, document number) rather than its kind.

    >>> document_opening("某某法院\\n民事判决书\\n（2022）京0105民初39193号\\n原告：周雨敏，女，1980年5月1日出生，住北京市。\\n"
    ...                  "原告周雨敏与被告陈华民间借贷纠纷一案，本院依法审理。", "某某法院", 150)
    '（2022）京0105民初39193号\\n原告：周雨敏'
    >>> document_opening("政府采购需求管理办法\\n第一章 总则\\n第一条 为加强……", "政府采购需求管理办法", 150)
    ''
    >>> document_opening("Josip Rodin、Osamu Aoki\\n版权© 1998-2002 Josip Rodin\\n本文档描述了如何构建软件包。", "手册", 150)
    ''
    """
    lines = []
    for line in first_chunk.splitlines():
        line = line.strip()
        if not line or line in heading:
            continue
        if _BODY_START.match(line):
            break
        if _LABELLED.match(line):  # "原告：张三，男，1980年……出生，住……。": the name is what tells documents apart
            if not _NOTICE.search(line):
                lines.append(_CLAUSE_END.split(line, 1)[0])
            continue
        if not _HEAD_LINE.match(line):  # a sentence: the body has begun
            break
        if _NUMBERED.search(line) and not _NOTICE.search(line):
            lines.append(line)
    return "\n".join(lines)[:chars]


def openings(chunks: Sequence, chars: int) -> list[str]:
    """For chunks in document order (objects with ``ordinal``, ``heading`` and ``text``; several documents may
    follow each other), the ``opening`` each one's passage text carries: its document's identity block (see
    ``document_opening``), or "" for a first chunk, which holds it.

    >>> from types import SimpleNamespace as C
    >>> openings([C(ordinal=0, heading="合同", text="合同\\n甲方：张三\\n第一条 ……"), C(ordinal=1, heading="合同", text="第二条")], 150)
    ['', '甲方：张三']
    """
    out, current = [], ""
    for chunk in chunks:
        if chunk.ordinal == 0:
            current = document_opening(chunk.text, chunk.heading, chars) if chars > 0 else ""
        out.append("" if chunk.ordinal == 0 else current)
    return out


# What the embedder sees for a chunk (``passage_text``); change the name when that changes, so stored
# vectors made the old way are never reused as if made the new way.
PASSAGE_FORMAT = "title > heading\\nidentity block 1\\ntext"
_FORMAT_BEFORE_OPENINGS = "title > heading\\ntext"


def stored_opening_chars(recorded: dict[str, str]) -> int | None:
    """The ``opening_chars`` the stored vectors of a knowledge base with these recorded settings were embedded
    with (0 for those from before identity blocks), or None when they were made some other way.

    >>> [stored_opening_chars(r) for r in ({"passage_text": "title > heading\\\\ntext"}, {},
    ...  {"passage_text": PASSAGE_FORMAT, "opening_chars": "150"}, {"passage_text": "title\\\\ntext"})]
    [0, 0, 150, None]
    """
    if recorded.get("passage_text", _FORMAT_BEFORE_OPENINGS) == _FORMAT_BEFORE_OPENINGS:
        return 0
    if recorded.get("passage_text") == PASSAGE_FORMAT:
        return int(recorded.get("opening_chars", "0"))
    return None
