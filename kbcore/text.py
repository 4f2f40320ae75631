"""Text helpers shared by ingest (which stores search tokens) and retrieval (which tokenises queries).

The search tokeniser must be the same on both sides, so it lives here, once.

>>> search_tokens("政府采购的供应商应当具备哪些条件？")[:4]
['政府', '采购', '供应', '供应商']
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Bump when search_tokens changes: knowledge bases record it and retrieval re-tokenises older ones.
TOKENIZER_VERSION = "jieba-search-1"

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]+|[a-z0-9]+(?:[._+-][a-z0-9]+)*")
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


def search_tokens(text: str) -> list[str]:
    """Tokens for BM25: jieba's search-engine mode (words and their sub-words) on CJK runs,
    lower-cased alphanumeric words elsewhere, stop words dropped."""
    jieba = _jieba()
    out: list[str] = []
    for match in _WORD.finditer(normalize(text)):
        piece = match.group()
        if "\u3400" <= piece[0]:
            out.extend(t for t in jieba.cut_for_search(piece) if t not in _STOP)
        elif piece not in _STOP:
            out.append(piece)
    return out
