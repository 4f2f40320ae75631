"""The TF-IDF yardstick: windows that cover every character with the pages they span, and cosine ranking."""

from kbcore.types import Chunk, Hit
from retrieval.baseline import STRIDE, WINDOW, TfidfBaseline, windows
from retrieval.harness import QAItem, is_hit, load_qa


def _chunks(texts_pages):
    return [Chunk(i + 1, 7, "doc.pdf", i, page, page, "", text) for i, (text, page) in enumerate(texts_pages)]


def test_windows_cover_the_text_once_joined_with_the_pages_they_span():
    first, second = "甲" * 250 + "重叠部分", "重叠部分" + "乙" * 240  # the splitter's overlap is not repeated
    cut = windows(_chunks([(first, 1), (second, 2), ("丙" * 30, 3)]))
    text = "甲" * 250 + "重叠部分" + "乙" * 240 + "\n" + "丙" * 30
    assert [w.text for w in cut] == [text[s:s + WINDOW] for s in (0, STRIDE, len(text) - WINDOW)]
    assert [(w.page_start, w.page_end) for w in cut] == [(1, 2), (1, 2), (1, 3)]
    assert cut[-1].text.endswith("丙" * 30) and all(w.source == "doc.pdf" for w in cut)
    assert [w.text for w in windows(_chunks([("短文", 4)]))] == ["短文"]


def test_ranks_by_shared_rare_bigrams(tmp_path):
    import numpy as np

    from kbcore.store import KnowledgeBase, NewChunk

    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="demo", dimension=2)
    texts = {"a.txt": "供应商应当具有良好的商业信誉。", "b.txt": "投标人应当按照招标文件的要求编制投标文件。",
             "c.txt": "采购人可以要求供应商提供有关资质证明文件。"}
    with kb.writer() as w:
        for source, text in texts.items():
            w.put_document(source, content_hash=source, title="", pages=1, chunks=[NewChunk(0, 1, 1, "", text, "")],
                           vectors=np.array([[1.0, 0.0]], dtype="float32"))
    hits = TfidfBaseline(kb).search("投标文件怎么编制？", k=3)
    assert hits[0].source == "b.txt" and all(h.score > 0 for h in hits)
    assert TfidfBaseline(kb).search("？", k=3) == []
    kb.close()


def test_a_question_may_name_several_correct_files(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "租金保险涵盖什么？", "source": ["a1.txt", "a2.txt"]}\n', encoding="utf-8")
    item = load_qa(qa)[0]
    assert item == QAItem(id="1", question="租金保险涵盖什么？", source="a1.txt", also=("a2.txt",))
    assert not is_hit(Hit(_chunks([("x", 1)])[0], 1.0), item)  # doc.pdf is neither
    assert is_hit(Hit(Chunk(1, 1, "sub/a2.txt", 0, 1, 1, "", "x"), 1.0), item)
