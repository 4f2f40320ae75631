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


def test_a_term_of_the_corpus_is_known_until_its_last_chunk_goes(corpus):
    index = BM25Index.build(range(len(corpus)), [" ".join(d) for d in corpus])
    assert "dpkg" in index and "评标" in index
    smaller = index.updated(removed_ids=[3])
    assert "dpkg" not in smaller and "评标" in smaller and len(smaller) == len(corpus) - 1
    assert "dpkg" in index and len(index) == len(corpus)  # the index it came from is unchanged
    assert smaller.search(["dpkg"], k=3) == []


@pytest.fixture(scope="module")
def dev_pieces(dev_documents, eval_dir):
    """Chunk ids 1.. and token strings of the real pieces, in document order, and real questions' tokens."""
    import json

    tokens = [t for pieces in dev_documents.values() for _, t in pieces]
    questions = [json.loads(line)["question"] for f in sorted((eval_dir / "qa").glob("*.jsonl"))
                 for line in open(f, encoding="utf-8")]
    queries = [search_tokens(q) for q in questions[::4]] + [t.split()[:6] for t in tokens[::37]]
    return np.arange(1, len(tokens) + 1), tokens, queries


def _same_results(incremental: BM25Index, scratch: BM25Index, queries):
    assert len(incremental) == len(scratch)
    np.testing.assert_array_equal(incremental.chunk_ids, scratch.chunk_ids)
    for query in queries:
        got, want = incremental.search(query, k=10**6), scratch.search(query, k=10**6)
        assert [cid for cid, _ in got] == [cid for cid, _ in want], query
        assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=0), query
    for term in {t for q in queries for t in q}:
        assert (term in incremental) == (term in scratch), term


@pytest.mark.parametrize("small", [False, True], ids=["defaults", "small-blocks-and-merge-steps"])
def test_an_index_kept_up_incrementally_equals_one_built_on_the_final_chunks(dev_pieces, small, monkeypatch):
    from retrieval import lexical

    if small:  # many blocks per add, merges copying a few postings at a time
        monkeypatch.setattr(lexical, "BLOCK_ROWS", 17)
        monkeypatch.setattr(lexical, "MERGE_STEP", 53)
    ids, tokens, queries = dev_pieces
    n = len(ids)
    a, b = int(n * 0.4), int(n * 0.7)
    index = BM25Index.build(ids[:a], tokens[:a])
    index = index.updated(ids[a:b], tokens[a:b])
    index = index.updated(ids[b:], tokens[b:])
    # Delete a scattered few and a run (a whole "document"), then add an updated version of the run under new ids.
    removed = np.concatenate([ids[5:a:7], ids[b + 10:b + 40]])
    index = index.updated(removed_ids=removed)
    rewritten = [t + " 修订版" for t in tokens[b + 10:b + 40]]
    new_ids = np.arange(n + 1, n + 1 + len(rewritten))
    index = index.updated(new_ids, rewritten)

    keep = ~np.isin(ids, removed)
    final_ids = np.concatenate([ids[keep], new_ids])
    final_tokens = [t for t, k in zip(tokens, keep) if k] + rewritten
    scratch = BM25Index.build(final_ids, final_tokens)
    _same_results(index, scratch, queries + [["修订版"], ["修订版", "政府采购"]])
    # A term only the deleted chunks held is gone; one of the updated version is there.
    gone = set(" ".join(tokens[i] for i in np.flatnonzero(~keep)).split()) - set(" ".join(final_tokens).split())
    assert gone and not any(t in index for t in gone)
    assert "修订版" in index
    assert index.segments <= 3, index.segments


def test_many_small_writes_keep_few_segments_and_the_same_scores(dev_pieces):
    ids, tokens, queries = dev_pieces
    index = BM25Index()
    removed = []
    for start in range(0, len(ids), 5):  # writes of 5 chunks; each deletes 5 written ten writes before
        gone = ids[start - 50:start - 45] if start >= 50 else ids[:0]
        index = index.updated(ids[start:start + 5], tokens[start:start + 5], removed_ids=gone)
        removed.extend(gone)
        assert index.segments <= 2 + int(np.log2(start // 5 + 1)), (start, index.segments)
    keep = ~np.isin(ids, removed)
    scratch = BM25Index.build(ids[keep], [t for t, k in zip(tokens, keep) if k])
    _same_results(index, scratch, queries)
