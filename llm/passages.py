"""What the reader sees: the retrieved passages a small model is given, the quote it falls back on (with the list
a sentence opens), whether the number it answered with sits in the sentence the question is about, and the names
a question asks about that the documents must hold before anything is read.

A 0.5B model reads three passages of one document far better than five from several: it took facts from a
neighbouring judgment, or merged two laws' deadlines. So the passages are deduplicated, passages of another
document are dropped when the question names this one's parties or number, and passages of one document are
shown together in reading order.

>>> from kbcore.types import Chunk, Hit
>>> def hit(i, source, text, opening, ordinal=1):
...     return Hit(Chunk(i, i, source, ordinal, 2, 2, "民事判决书", text), 1.0 / i, opening=opening)
>>> hits = [hit(1, "b.pdf", "月租金3600元。", "原告：王伟\\n被告：李娜"),
...         hit(2, "a.pdf", "月租金5100元。", "原告：宋静\\n被告：朱洋")]
>>> [h.source for h in select_passages("宋静诉朱洋的租赁纠纷，月租金多少？", hits, 3)]
['a.pdf']
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator, Sequence

from kbcore.text import document_opening, tagged_words
from kbcore.types import Hit
from llm.checks import (asked_quantity, bigrams, content_of, fold, holds_number, stated_quantities,
                         states_quantity)
from llm.prompts import language_of

# Characters of a document's head that hold its identity block (kbcore.config.ChunkSettings.opening_chars).
IDENTITY_CHARS = 150


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


def identity(hit: Hit) -> str:
    """The identity block of the hit's document: carried by the hit, or read from the chunk that holds it."""
    if hit.opening or hit.chunk.ordinal != 0:
        return hit.opening
    return document_opening(hit.chunk.text, hit.heading, IDENTITY_CHARS)


def named_documents(question: str, hits: Sequence[Hit]) -> set[str] | None:
    """The documents whose identity the question names (bigrams of a party or a case number that no other
    retrieved document's identity block has), or None when it names none."""
    asked = bigrams(content_of(question))
    blocks: dict[str, set[str]] = {}
    for h in hits:
        blocks.setdefault(h.source, set()).update(bigrams(content_of(identity(h))))
    named = set()
    for source, grams in blocks.items():
        others = set().union(*(g for s, g in blocks.items() if s != source))
        if len((asked & grams) - others) >= 2:
            named.add(source)
    return named or None


def select_passages(question: str, hits: Sequence[Hit], limit: int) -> list[Hit]:
    """At most ``limit`` passages for the reader: distinct, from the documents the question names when it
    names any, grouped by document (documents in rank order, passages in reading order)."""
    passages = distinct_passages(hits)
    named = named_documents(question, passages)
    if named:
        passages = [h for h in passages if h.source in named]
    passages = passages[:limit]
    order = list(dict.fromkeys(h.source for h in passages))
    return sorted(passages, key=lambda h: (order.index(h.source), h.chunk.ordinal))


_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;]?")


def quote(question: str, passages: Sequence[Hit], longest: int = 200, min_share: float = 0.25
          ) -> tuple[int, str] | None:
    """The passage sentence that shares most with the question, as (0-based passage, sentence): what the
    answer stage shows, quoted, when the model's own answer is unusable. None when even that sentence holds
    under ``min_share`` of the question's words, no quantity of the kind the question asks for, or the passages
    lack a noun the question names (``unread_terms``): it would answer something else, and "not found" is the
    honest reply.

    >>> from kbcore.types import Chunk, Hit
    >>> law = [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "法", "第四十六条 招标人应当在三十日内订立书面合同。"), 1.0)]
    >>> quote("招标人要在多少天内订立书面合同？", law)
    (0, '第四十六条 招标人应当在三十日内订立书面合同。')
    >>> quote("投标保证金最多是多少？", law) is None
    True

    The title the question cites says where to look, not what is asked, so it does not count in the share:

    >>> rules = [Hit(Chunk(2, 2, "tiaoli.pdf", 5, 3, 3, "中华人民共和国招标投标法实施条例 > 第二章 招标",
    ...                    "第二十二条 招标人应当自收到异议之日起3日内作出答复。"), 1.0)]
    >>> quote("按招标投标法实施条例，招标人收到对招标文件的异议后要在几天内答复？", rules)
    (0, '第二十二条 招标人应当自收到异议之日起3日内作出答复。')
    """
    question, asked = asked_words(question, passages)
    wants = asked_quantity(question)
    best, best_score, best_shared = None, 0, 0
    for i, sentence, shared in scored_sentences(asked, passages):
        score = shared
        if score and wants and states_quantity(sentence, wants):
            score += 2  # the question asks for an amount, a count or a time, and this sentence gives one
        if score > best_score:
            best, best_score, best_shared = (i, sentence[:longest]), score, shared
    if best is None or best_shared < min_share * len(asked) or (wants and not states_quantity(best[1], wants)):
        return None
    if unread_terms(question, passages):
        return None  # the passages are about something near, not the thing asked (质保金 beside 履约保证金)
    return best[0], with_list_items(passages[best[0]].text, best[1], 2 * longest)


# An item of an enumeration: （一） (2) 三、 4. •
_LIST_ITEM = re.compile(r"\s*(?:[（(][一二三四五六七八九十\d]{1,3}[)）]|[一二三四五六七八九十]{1,3}、|\d{1,2}[.、](?!\d)|•)")


def with_list_items(text: str, sentence: str, longest: int = 400) -> str:
    """``sentence``, and when it opens a list (it ends in a colon), the enumerated items that follow it in
    ``text``, up to ``longest`` characters: "应当具备下列条件：" says nothing without them.

    >>> article = "第二十二条 供应商应当具备下列条件：\\n（一）具有独立承担民事责任的能力；\\n（二）具有良好的商业信誉。\\n第二十三条 ……"
    >>> with_list_items(article, "第二十二条 供应商应当具备下列条件：")
    '第二十二条 供应商应当具备下列条件：（一）具有独立承担民事责任的能力；（二）具有良好的商业信誉。'
    >>> is_list(_), is_list("第二十三条 ……")
    (True, False)
    """
    start = text.find(sentence)
    if start < 0 or not sentence.endswith(("：", ":")):
        return sentence
    out = sentence
    for item in _SENTENCE.findall(text[start + len(sentence):]):
        if not _LIST_ITEM.match(item) or len(out) + len(item.strip()) > longest:
            break
        out += item.strip()
    return out


_LIST_OPENED = re.compile(r"[：:]" + _LIST_ITEM.pattern)


def is_list(text: str) -> bool:
    """Whether ``text`` holds a list: a colon followed by an enumerated item."""
    return bool(_LIST_OPENED.search(text))


def asked_words(question: str, passages: Sequence[Hit]) -> tuple[str, set[str]]:
    """The question less the titles it cites (``without_cited_headings``), and the character pairs of what it
    asks: less the parties or case number it names, which every sentence of the right document's head holds."""
    question = without_cited_headings(question, passages)
    asked = bigrams(content_of(question))
    return question, asked - set().union(*(bigrams(content_of(identity(h))) for h in passages))


def scored_sentences(asked: set[str], passages: Sequence[Hit]) -> Iterator[tuple[int, str, int]]:
    """(0-based passage, sentence, character pairs it shares with ``asked``) for each sentence of the passages;
    a title or a heading (under 8 characters of content) says nothing a question asks and is left out."""
    for i, hit in enumerate(passages):
        for sentence in _SENTENCE.findall(hit.text):
            if len(content_of(sentence)) >= 8:
                yield i, sentence.strip(), len(asked & bigrams(content_of(sentence)))


# How many more of the question's character pairs another sentence must hold before the answer's quantity is
# taken for the neighbouring clause's: the middle of the margins that changed the same dev-set answers
# (llm.eval, bench/README.md).
MISPLACED_MARGIN = 2


def misplaced_quantity(question: str, answer: str, passages: Sequence[Hit]) -> list[str]:
    """The quantities an answer gives for the one the question asks, when another passage sentence stating a
    quantity of that kind matches the question clearly better than any sentence holding the answer's: the 0.5B
    read the number from the clause next door ("7个工作日" of the complaints article, asked when the contract
    must be signed). Empty when the answer's quantity is the best-placed one. Counts are not checked: any number
    is one, and a list's numbering would trip it.

    >>> from kbcore.types import Chunk, Hit
    >>> law = [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "法", "第四十六条 采购人应当自中标通知书发出之日起三十日内，与中标人签订政府"
    ...                                       "采购合同。第五十二条 供应商可以在知道其权益受到损害之日起七个工作日内提出质疑。"), 1.0)]
    >>> misplaced_quantity("中标通知书发出后，要在多少天内签合同？", "应当在7个工作日内签合同[1]。", law)
    ['7个工作日']
    >>> misplaced_quantity("中标通知书发出后，要在多少天内签合同？", "应当在30日内签订合同[1]。", law)
    []
    """
    wants = asked_quantity(question)
    if wants in (None, "count"):
        return []
    question, asked = asked_words(question, passages)
    given = [q for q in stated_quantities(answer, wants) if not holds_number(fold(question), q)]
    if not given:
        return []
    holding, other = 0, 0
    for _, sentence, shared in scored_sentences(asked, passages):
        folded = fold(sentence)
        if any(holds_number(folded, q) for q in given):
            holding = max(holding, shared)
        elif states_quantity(sentence, wants):
            other = max(other, shared)
    return given if other > holding + MISPLACED_MARGIN else []


def without_cited_headings(question: str, passages: Sequence[Hit], shortest: int = 4) -> str:
    """The question less the longest run of characters it shares with each passage's heading path, when that run
    is ``shortest`` characters or more: the law, manual or chapter it cites ("按招标投标法实施条例").

    >>> from kbcore.types import Chunk
    >>> without_cited_headings("按政府采购法，供应商要具备什么条件？",
    ...     [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "中华人民共和国政府采购法 > 第二章", "……"), 1.0)])
    '按，供应商要具备什么条件？'
    """
    from difflib import SequenceMatcher

    for heading in dict.fromkeys(h.heading for h in passages if h.heading):
        run = SequenceMatcher(None, question, heading, autojunk=False).find_longest_match(
            0, len(question), 0, len(heading))
        if run.size >= shortest:
            question = question[:run.a] + question[run.a + run.size:]
    return question


# Question words jieba tags as nouns ("多长时间", "哪些项目"): what is asked, not what it is about.
_ASKING = re.compile(r"多|几|哪|什么|怎")


def unread_terms(question: str, passages: Sequence[Hit]) -> list[str]:
    """The nouns of three or more characters the question names that none of the passages holds.

    Too often a plain-spoken word ("签合同", "局域网") to refuse a question on its own, it tells when a quote
    would answer a neighbouring question.

    >>> from kbcore.types import Chunk, Hit
    >>> law = [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "法", "履约保证金的数额不得超过政府采购合同金额的10%。"), 1.0)]
    >>> unread_terms("政府采购工程的质保金最多能预留合同金额的百分之几？", law), unread_terms("签合同要交履约保证金吗？", law)
    (['质保金'], [])
    """
    held = bigrams("\n".join(f"{h.heading}\n{h.text}" for h in passages))  # bigrams folds the text itself
    return [w for w, flag in tagged_words(question)
            if flag[:1] == "n" or flag == "vn"
            # Half its character pairs is enough: "签合同" is read where the passage says "签订合同".
            if len(w) >= 3 and not _ASKING.search(w) and len(bigrams(w) & held) * 2 < len(bigrams(w))]


_TITLE = re.compile(r"《([^》]{2,40})》")


def missing_titles(question: str, hits: Sequence[Hit], min_share: float = 0.8) -> list[str]:
    """The titles the question names in 《》 that no retrieved passage comes from or quotes: a question about
    another law than the knowledge base holds. A title counts as found in a passage's text, or in a heading
    that holds ``min_share`` of its character pairs ("政府采购实施条例" for "政府采购法实施条例").

    >>> from kbcore.types import Chunk, Hit
    >>> law = [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "中华人民共和国政府采购法实施条例 > 第六章 质疑与投诉", "第五十五条 ……"), 1.0)]
    >>> missing_titles("《政府采购实施条例》怎么规定投诉？", law), missing_titles("《政府采购质疑和投诉办法》规定了什么？", law)
    ([], ['《政府采购质疑和投诉办法》'])
    """
    missing = []
    for title in _TITLE.findall(question):
        wanted = bigrams(title)
        if not any(fold(title) in fold(h.text) or len(wanted & bigrams(h.heading)) >= min_share * len(wanted)
                   for h in hits):
            missing.append(f"《{title}》")
    return missing


_DIGITS = re.compile(r"\d+(?:\.\d+)?[万亿]?")  # "200万" is compared as 2000000, the form ``fold`` gives


def missing_numbers(question: str, hits: Sequence[Hit]) -> list[str]:
    """The numbers the question names in digits ("debhelper 13", "Debian 12", "第94号") that no retrieved
    passage holds: a question about a version, an order or a year the documents are not about.

    >>> from kbcore.types import Chunk, Hit
    >>> law = [Hit(Chunk(1, 1, "fa.pdf", 1, 3, 3, "法", "超过二百万元的货物和服务采购项目"), 1.0)]
    >>> missing_numbers("超过200万元的项目要预留多少？", law), missing_numbers("财政部令第94号规定了什么？", law)
    ([], ['94'])
    >>> missing_numbers("最多能预留合同金额的百分之几？", law)
    []
    """
    seen = "\n".join(fold(f"{h.heading}\n{h.opening}\n{h.text}") for h in hits)  # a case number is in the opening
    # Digits as written: a Chinese numeral in a question is a word as often as a number ("统一六国", "百分之几").
    written = dict.fromkeys(_DIGITS.findall(unicodedata.normalize("NFKC", question)))
    return [n for n in written if not holds_number(seen, fold(n))]


_LATIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[._+-][A-Za-z0-9]+)*")
_YEAR = re.compile(r"(?<![0-9])((?:19|20)[0-9]{2}) ?年")
# Units are not names: "多少 MB" asks about a size, whatever unit the documents write it in.
_UNITS = frozenset("kb mb gb tb pb kg km cm mm ms hz khz mhz ghz kw kwh".split())
# Places by their administrative suffix: "深圳市政府" asks about 深圳.
_PLACE_SUFFIXES = ("自治区", "自治州", "省", "市", "县")


def asked_names(question: str) -> list[str]:
    """The names a Chinese question is about that any answer must find in the documents: Latin-script names
    (software, standards, organisations), years, and places named with their administrative suffix.

    The threshold on the best hit cannot refuse these: "怎样安装 Flatpak 应用" lies close to every passage on
    installing software. English questions give none, since most of their words are ordinary ones.

    >>> asked_names("在 Debian 上怎样安装和使用 Flatpak 应用？")
    ['Debian', 'Flatpak']
    >>> asked_names("深圳市政府采购评审专家的劳务报酬是多少？2024年有变化吗？多少 MB？")
    ['2024', '深圳']
    >>> asked_names("How do I install Flatpak?")
    []
    """
    if language_of(question) != "zh":
        return []
    names = [m.group() for m in _LATIN_NAME.finditer(question)
             if len(m.group()) >= 2 and m.group().lower() not in _UNITS]
    names += [m.group(1) for m in _YEAR.finditer(question)]
    for word, flag in tagged_words(question):
        if flag in ("ns", "nt"):
            cut = min((i for s in _PLACE_SUFFIXES if (i := word.find(s, 2)) >= 2), default=None)
            if cut is not None:
                names.append(word[:cut])
    return list(dict.fromkeys(names))

