"""Tables of contents in the layouts real PDFs give them, drawn into a PDF and read back through ingest: each
must be recognised, the pages they list must not be, and the page that answers a heading-like question must
outrank the contents page that repeats its heading."""

import pytest

from ingest.clean import clean_document
from ingest.parse import parse_file
from ingest.split import split_document
from retrieval.retriever import looks_like_contents

CHAPTERS = [
    ("第一章", "总则", "为了规范采购行为，提高资金的使用效益，保护当事人的合法权益，制定本办法。本办法适用于各级国家机关。"),
    ("第二章", "采购当事人", "采购人是指依法进行采购的国家机关、事业单位和团体组织。供应商应当具有良好的商业信誉。"),
    ("第三章", "采购方式", "采购采用公开招标、邀请招标、竞争性谈判和询价等方式。公开招标应当作为主要采购方式。"),
    ("第四章", "采购程序", "采购人应当编制采购预算，并按照规定的程序报送审批。采购文件应当保存十五年以上。"),
    ("第五章", "监督检查", "财政部门应当加强对采购活动的监督检查，对违法行为依法处理并公告处理结果。"),
]


def _toc_lines(style: str) -> list[list[tuple[float, str]]]:
    """Each entry as (x, text) pieces on one line; a piece at x=None starts a new line."""
    lines = []
    for page, (number, title, _body) in enumerate(CHAPTERS, start=2):
        if style == "leaders":  # Word: "第一章 总则 ………… 2"
            lines.append([(72, f"{number} {title} " + "…" * (24 - len(title)) + f" {page}")])
        elif style == "spaced-leaders":  # LaTeX / Texinfo: "1 总则 . . . . . 2"
            lines.append([(72, f"{page - 1} {title} " + ". " * (16 - 2 * len(title)) + f"{page}")])
        elif style == "columns":  # number, heading and page number as separate text blocks
            lines += [[(72, f"{page - 1}.1")], [(110, title)], [(500, str(page))]]
        elif style == "no-pages":  # the 目录 at the head of a Chinese law
            lines.append([(72, f"{number} {title}")])
    return lines


def _draw(path, style: str) -> None:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((250, 60), "目 录", fontname="china-s", fontsize=14)
    y = 90
    for line in _toc_lines(style):
        for x, text in line:
            page.insert_text((x, y), text, fontname="china-s", fontsize=11)
            y += 0 if style != "columns" else 18
        y += 22 if style != "columns" else 0
    for number, title, body in CHAPTERS:
        page = doc.new_page()
        page.insert_text((72, 80), f"{number} {title}", fontname="china-s", fontsize=14)
        page.insert_textbox((72, 100, 520, 300), body * 2, fontname="china-s", fontsize=11)
    doc.save(path)


STYLES = ["leaders", "spaced-leaders", "columns", "no-pages"]


@pytest.mark.parametrize("style", STYLES)
def test_contents_page_is_recognised_and_its_chapters_are_not(tmp_path, style):
    _draw(tmp_path / "doc.pdf", style)
    chunks = split_document(clean_document(parse_file(tmp_path / "doc.pdf")))
    # The contents page is one chunk of its own: no chapter's text shares it (and its ranking penalty).
    flagged = [(c.page_start, c.page_end) for c in chunks if looks_like_contents(c.text)]
    assert flagged == [(1, 1)], [(c.page_start, c.page_end, c.text) for c in chunks]
    # "目 录" is neither the document's title nor a parent heading of the chapters.
    assert all(c.heading.split(" > ")[0] == "doc" for c in chunks), [c.heading for c in chunks]


@pytest.mark.slow
@pytest.mark.parametrize("style", ["leaders", "no-pages"])
def test_the_chapter_outranks_the_contents_page(tmp_path, settings, style):
    from ingest import ingest_folder
    from retrieval import open_retriever

    (tmp_path / "docs").mkdir()
    _draw(tmp_path / "docs" / "banfa.pdf", style)
    ingest_folder(tmp_path / "docs", settings, kb_path=tmp_path / "kb")
    retriever = open_retriever(settings, tmp_path / "kb")
    for (_number, title, _body), page in zip(CHAPTERS, range(2, 7)):
        for mode in ("hybrid", "bm25", "dense"):
            top = retriever.search(title, k=1, mode=mode)[0]
            assert top.pages[0] == page, (title, mode, top.pages, top.text)
