from dataclasses import replace

import pytest

from kbcore.store import EmbeddingMismatchError, KnowledgeBase
from kbcore.types import Chunk
from retrieval import Retriever, open_retriever
from retrieval.adapters import as_langchain_retriever, as_llamaindex_retriever
from tests.workbooks import DEADLINES, deadlines_workbook

pytestmark = pytest.mark.slow

QUESTION = "供应商参加政府采购活动应当具备哪些条件？"


def test_hits_carry_source_pages_heading_and_relevance(eval_retriever):
    hits = eval_retriever.search(QUESTION, k=5)
    assert len(hits) == 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # The law's article 22 answers it; the implementing regulation's article 17 (same topic) may rank first.
    assert hits[0].source in ("zhengfu-caigou-fa.pdf", "zhengfu-caigou-fa-shishi-tiaoli.pdf")
    law = [h for h in hits[:3] if h.source == "zhengfu-caigou-fa.pdf"]
    assert law and 2 in law[0].pages and "商业信誉" in law[0].text and law[0].heading
    assert all(h.dense is not None and -1.0 <= h.dense <= 1.0 for h in hits)


def test_relevance_separates_in_corpus_from_unrelated_questions(eval_retriever):
    inside = eval_retriever.search(QUESTION, k=1)[0].dense
    outside = eval_retriever.search("法国的首都是哪里？", k=1)[0].dense
    assert inside > outside


def test_source_filter_restricts_results(eval_retriever):
    hits = eval_retriever.search(QUESTION, k=5, sources=["zhaobiao-toubiao-fa.pdf"])
    assert hits and {h.source for h in hits} == {"zhaobiao-toubiao-fa.pdf"}
    assert eval_retriever.search(QUESTION, k=5, sources=["no-such-file.pdf"]) == []


@pytest.mark.parametrize("question", ["", "   \n", "？", "How do I install a Debian package with dpkg?",
                                      "Debian 的 apt-get 和 dpkg 有什么区别？", "政府采购" * 3000])
def test_odd_questions_never_crash(eval_retriever, question):
    hits = eval_retriever.search(question, k=3)
    assert len(hits) <= 3
    if question.strip(" \n？"):
        assert hits


def test_english_question_finds_the_debian_faq(eval_retriever):
    hits = eval_retriever.search("What is a Debian package? dpkg", k=5)
    assert any(h.source == "debian-faq-zh-cn.pdf" for h in hits)


def test_mentions_tells_names_the_documents_hold_from_names_they_never_use(eval_retriever):
    for held in ("dpkg", "Debian", "apt-get", "SPI", "政府采购", "the"):
        assert eval_retriever.mentions(held), held
    for absent in ("Flatpak", "DebConf24", "riscv64", "深圳"):
        assert not eval_retriever.mentions(absent), absent


def test_context_window_adds_the_neighbouring_articles_in_order(eval_retriever):
    from dataclasses import replace

    # In 政府采购法 each article is a chunk, so one neighbour on each side of 第二十二条 is 第二十一条 and 第二十三条.
    hit = next(h for h in eval_retriever.search(QUESTION, k=5)
               if h.source == "zhengfu-caigou-fa.pdf" and h.chunk.text.startswith("第二十二条"))
    one_each_side = Retriever(eval_retriever.kb, eval_retriever.embedder,
                              replace(eval_retriever.settings, context_window=1, min_context_chars=0))
    merged = one_each_side.widened(hit)
    assert merged.text.startswith("第二十一条 供应商是指向采购人提供货物、工程或者服务的法人、其他组织或者自然人。\n"
                                  "第二十二条 供应商参加政府采购活动应当具备下列条件")
    assert merged.text.endswith("对供应商的资格进行审查。") and merged.text.count("第二十二条") == 1
    assert merged.pages == [2]


def test_joining_neighbours_keeps_one_copy_of_the_sentence_they_share():
    from retrieval.retriever import _joined

    def chunk(i, text):
        return Chunk(i, 1, "a.pdf", i, 1, 1, "", text)

    shared = [chunk(1, "第一条 甲。第二条 乙。"), chunk(2, "第二条 乙。第三条 丙。")]
    assert _joined(shared) == "第一条 甲。第二条 乙。第三条 丙。"
    assert _joined([chunk(1, "第一条 甲。"), chunk(2, "第三条 丙。")]) == "第一条 甲。\n第三条 丙。"


def test_short_hits_are_widened_with_neighbours_and_cite_all_their_pages(eval_retriever):
    from dataclasses import replace

    question = "政府采购应当遵循哪些原则？"  # answered by a one-sentence article (政府采购法 第三条)
    narrow = Retriever(eval_retriever.kb, eval_retriever.embedder,
                       replace(eval_retriever.settings, min_context_chars=0)).search(question, k=5)
    wide = eval_retriever.search(question, k=5)
    assert [h.chunk.id for h in wide] == [h.chunk.id for h in narrow]  # ranking is not touched
    wanted = eval_retriever.settings.min_context_chars
    short = [(n, w) for n, w in zip(narrow, wide) if len(n.text) < wanted]
    assert short and all(n.context is None for n in narrow)
    for n, w in short:
        assert n.chunk.text in w.text and len(w.text) > len(n.text)
        parts = [c for c in eval_retriever.kb.neighbours(n.chunk, 3) if c.text in w.text]
        assert set(w.pages) == {p for c in parts for p in c.pages} >= set(n.pages)
        assert {c.heading for c in parts} == {n.heading}  # never into another section or a contents page
    for n, w in zip(narrow, wide):
        if len(n.text) >= wanted:
            assert w.context is None and w.pages == n.pages


def test_widening_never_crosses_a_workbooks_sheets(tmp_path, eval_retriever, settings):
    """A sheet's rows are numbered a million apart from the next sheet's: a hit widened into the next sheet
    cited a million pages."""
    from ingest.pipeline import ingest_folder

    (tmp_path / "docs").mkdir()
    deadlines_workbook(tmp_path / "docs" / "期限.xlsx", [row[1:] for row in DEADLINES[:3]])
    ingest_folder(tmp_path / "docs", settings, kb_path=tmp_path / "kb")
    kb = KnowledgeBase(tmp_path / "kb")
    wide = Retriever(kb, eval_retriever.embedder, replace(settings.retrieval, context_window=2))
    hits = wide.search("采购合同备案的期限", k=3)
    assert len(hits) == 2 and all(h.context_pages is None or h.context_pages[1] - h.context_pages[0] < 10
                                  for h in hits), [h.context_pages for h in hits]
    assert sorted(len(h.pages) for h in hits) == [1, 3], [h.pages for h in hits]


def test_empty_knowledge_base_gives_no_hits(tmp_path, eval_retriever, settings):
    embedder = eval_retriever.embedder
    kb = KnowledgeBase.create(tmp_path / "empty", embedding_model=embedder.model_id, dimension=embedder.dimension)
    assert Retriever(kb, embedder, settings.retrieval).search(QUESTION) == []


def test_other_embedding_model_is_refused(tmp_path, eval_retriever, settings):
    embedder = eval_retriever.embedder
    KnowledgeBase.create(tmp_path / "other", embedding_model="someone/else", dimension=embedder.dimension)
    with pytest.raises(EmbeddingMismatchError, match="--rebuild"):
        open_retriever(settings, tmp_path / "other")


def test_langchain_and_llamaindex_adapters_return_the_same_ranking(eval_retriever):
    ours = [h.chunk.id for h in eval_retriever.search(QUESTION, k=4)]
    lc = as_langchain_retriever(eval_retriever, k=4).invoke(QUESTION)
    assert [d.metadata["chunk_id"] for d in lc] == ours
    assert lc[0].metadata["source"] == eval_retriever.search(QUESTION, k=1)[0].source and lc[0].metadata["pages"]
    li = as_llamaindex_retriever(eval_retriever, k=4).retrieve(QUESTION)
    assert [int(n.node.node_id) for n in li] == ours
    assert li[0].score == pytest.approx(eval_retriever.search(QUESTION, k=1)[0].score)


def test_contents_pages_are_recognised_and_ranked_below_their_sections(eval_retriever):
    from retrieval.retriever import looks_like_contents

    flagged = {(c.source, c.page_start) for c in eval_retriever.kb.chunks() if looks_like_contents(c.text)}
    # maint-guide's table of contents fills pages 3-6; nothing else in the corpus is one.
    assert flagged and {s for s, _ in flagged} == {"maint-guide.zh-cn.pdf"}
    assert {p for _, p in flagged} <= {3, 4, 5, 6}
    for heading in ["Debian 的社会驱动力", "git-buildpackage 及其相似命令", "快速重构建"]:
        for mode in ("hybrid", "bm25"):
            top = eval_retriever.search(heading, k=1, mode=mode)[0]
            assert not looks_like_contents(top.chunk.text), (heading, mode, top.chunk.page_start)


class _FixedEmbedder:
    """Every text the same vector: the BM25 side is what these tests look at."""

    model_id, dimension = "fixed-test-vector", 8

    def embed_query(self, text):
        import numpy as np

        return np.full(self.dimension, self.dimension ** -0.5, dtype=np.float32)

    embed_passages = None


def _put(kb, source, pieces, salt=""):
    import numpy as np

    from kbcore.store import NewChunk

    with kb.writer() as writer:
        writer.put_document(source, content_hash=source + salt, title=source, pages=1, chunks=[
            NewChunk(ordinal=i, page_start=1, page_end=1, heading="", text=text + salt, tokens=tokens + salt)
            for i, (text, tokens) in enumerate(pieces)],
            vectors=np.full((len(pieces), 8), 8 ** -0.5, dtype=np.float32))


def test_bm25_follows_writes_without_reading_every_chunk_again(tmp_path, dev_documents, settings):
    from dataclasses import replace

    import numpy as np

    from kbcore.text import search_tokens

    sources = list(dev_documents)
    sources = sources[-1:] + sources[:-1]  # the Debian FAQ (half the pieces), then eight regulations
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model=_FixedEmbedder.model_id, dimension=8)
    for source in sources[:7]:
        _put(kb, source, dev_documents[source])
    lexical = replace(settings.retrieval, mode="bm25", context_window=0, min_context_chars=0)
    retriever = Retriever(kb, _FixedEmbedder(), lexical)
    questions = ["供应商参加政府采购活动应当具备哪些条件", "评审专家的抽取", "Debian 软件包 dpkg", "进口产品 审核",
                 "采购需求 调查", "框架协议 采购"]

    def same_as_a_fresh_retriever():
        fresh = Retriever(kb, _FixedEmbedder(), lexical)
        for question in questions:
            tokens = search_tokens(question)
            got = retriever._lexical_index().search(tokens, 30)
            want = fresh._lexical_index().search(tokens, 30)
            assert [c for c, _ in got] == [c for c, _ in want], question
            assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-5), question
            hits, fresh_hits = retriever.search(question, k=5), fresh.search(question, k=5)
            assert [(h.chunk.id, round(h.lexical, 5)) for h in hits] == \
                   [(h.chunk.id, round(h.lexical, 5)) for h in fresh_hits], question
        assert len(retriever._lexical_index()) == kb.chunk_count()

    assert retriever.search(questions[0], k=5)
    read = retriever.lexical_tokens_read
    assert read == kb.chunk_count()
    for source in sources[7:]:  # one more document, then another: only their chunks are read
        _put(kb, source, dev_documents[source])
        same_as_a_fresh_retriever()
        assert retriever.lexical_tokens_read == read + len(dev_documents[source])
        read = retriever.lexical_tokens_read
    # A term only the deleted document holds is no longer mentioned; deleting reads no tokens.
    deleted = sources[0]
    only_there = set(" ".join(t for _, t in dev_documents[deleted]).split()) - set(
        " ".join(t for s in sources[1:] for _, t in dev_documents[s]).split())
    term = next(t for t in sorted(only_there) if len(t) > 3 and t.isascii() and t.isalpha())
    assert retriever.mentions(term)
    with kb.writer() as writer:
        assert writer.delete_document(deleted)
    same_as_a_fresh_retriever()
    assert retriever.lexical_tokens_read == read
    assert not retriever.mentions(term)
    # An updated document gets new chunk ids: its old chunks go, its new ones are read.
    shorter = dev_documents[sources[1]][:10]
    _put(kb, sources[1], shorter, salt=" 修订")
    same_as_a_fresh_retriever()
    assert retriever.lexical_tokens_read == read + len(shorter)
    assert retriever.mentions("修订")
