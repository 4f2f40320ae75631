import math
from collections import Counter

import numpy as np
import pytest

from kbcore.text import search_tokens
from retrieval.lexical import BM25Index


def reference_bm25(docs: list[list[str]], query: list[str], k1=1.2, b=0.75) -> list[float]:
    """BM25 written out term by term, the textbook way, to check the matrix version against."""
    n = len(docs)
    avg = sum(map(len, docs)) / n
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for term in query:
            if term not in tf:
                continue
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            s += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(d) / avg))
        scores.append(s)
    return scores


@pytest.fixture(scope="module")
def corpus():
    texts = [
        "政府采购应当遵循公开透明原则、公平竞争原则、公正原则和诚实信用原则。",
        "供应商参加政府采购活动应当具备下列条件：具有独立承担民事责任的能力；具有良好的商业信誉。",
        "招标人采用公开招标方式的，应当发布招标公告。依法必须进行招标的项目的招标公告，应当通过国家指定的报刊发布。",
        "Debian 软件包通常包括实现一组相关命令或功能所需的所有文件。dpkg 是软件包管理的基础。",
        "评标委员会由招标人的代表和有关技术、经济等方面的专家组成，成员人数为五人以上单数。",
    ]
    return [search_tokens(t) for t in texts]


@pytest.mark.parametrize("question", ["供应商需要什么条件参加政府采购", "招标公告在哪里发布", "dpkg 软件包", "评标委员会专家人数"])
def test_scores_equal_textbook_bm25(corpus, question):
    index = BM25Index.build(range(100, 100 + len(corpus)), [" ".join(d) for d in corpus])
    query = search_tokens(question)
    expected = reference_bm25(corpus, query)
    got = dict(index.search(query, k=len(corpus)))
    for i, score in enumerate(expected):
        assert got.get(100 + i, 0.0) == pytest.approx(score, rel=1e-5)
    assert index.search(query, k=1)[0][0] == 100 + int(np.argmax(expected))


def test_unknown_terms_and_masks(corpus):
    index = BM25Index.build(range(len(corpus)), [" ".join(d) for d in corpus])
    assert index.search(["不存在的词"], k=3) == []
    mask = np.zeros(len(corpus), dtype=bool)
    mask[2] = True
    assert [cid for cid, _ in index.search(search_tokens("招标 公告 评标"), k=5, allowed=mask)] == [2]


def test_search_tokens_fold_width_and_case():
    assert search_tokens("ＤＥＢＩＡＮ　软件包") == search_tokens("debian 软件包")
