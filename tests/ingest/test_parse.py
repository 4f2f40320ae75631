"""Parsing real PDFs and text formats, and a clear reason for every bad file."""

from __future__ import annotations

import json
import unicodedata

import pymupdf
import pytest

from ingest.clean import clean_document
from ingest.parse import TABLE_CELL_SEPARATOR, ParseError, UnsupportedFileError, parse_file


def squeeze(text: str) -> str:
    """The eval set's hit rule: no whitespace, NFKC."""
    return unicodedata.normalize("NFKC", "".join(text.split()))


def test_regulation_answers_are_on_their_gold_pages(eval_dir):
    """Every gold phrase of regulations.jsonl comes out of our parse+clean once, on a gold page
    (compared as the eval set's hit rule does: whitespace removed, NFKC)."""
    items = [json.loads(line) for line in (eval_dir / "qa" / "regulations.jsonl").open(encoding="utf-8")]
    docs = {}
    for item in items:
        source = item["source"]
        if source not in docs:
            doc = clean_document(parse_file(eval_dir / "docs" / source))
            kept = [(i, ch) for i, ch in enumerate(doc.text) if not ch.isspace()]
            docs[source] = doc, unicodedata.normalize("NFKC", "".join(ch for _, ch in kept)), [i for i, _ in kept]
        doc, squeezed, origin = docs[source]
        for answer in item["answers"]:
            at = squeezed.find(squeeze(answer))
            assert at >= 0, f"{item['id']}: {answer!r} not in the cleaned text of {source}"
            assert squeezed.find(squeeze(answer), at + 1) < 0
            start, end = origin[at], origin[at + len(squeeze(answer)) - 1] + 1
            assert set(doc.page_span(start, end)) <= set(item["pages"]), item["id"]


def test_pdf_title_pages_and_outline(eval_dir):
    doc = parse_file(eval_dir / "docs" / "zhengfu-caigou-fa.pdf")
    assert doc.title == "中华人民共和国政府采购法"
    assert [p.number for p in doc.pages] == list(range(1, 9))
    assert ("第二章 政府采购当事人", 2) in [(h.title, h.page) for h in doc.headings]
    # Page 2 starts with article 13 and holds article 22's conditions (the PDF as rendered).
    assert doc.pages[1].text.startswith("第十三条")
    assert "具有良好的商业信誉和健全的财务会计制度" in doc.pages[1].text


def test_table_rows_come_out_in_order_from_a_real_pdf(eval_dir):
    """maint-guide page 39 has a ruled table of the nine man-page sections."""
    doc = parse_file(eval_dir / "docs" / "maint-guide.zh-cn.pdf")
    rows = [line for line in doc.pages[38].text.splitlines() if TABLE_CELL_SEPARATOR in line]
    assert rows[0] == "Section(部分) | Description(描述) | Notes(提示)"
    assert [r.split(" | ")[0] for r in rows[1:]] == [str(n) for n in range(1, 10)]
    assert rows[2] == "2 | System calls(系统调用) | Functions provided by the kernel(由内核提供的功能)"
    # The text around the table keeps its place: the sentence introducing it comes just before.
    text = doc.pages[38].text
    assert text.index("列举了man 手册页的章节") < text.index(rows[0]) < text.index("所以gentoo 的man 手册页")
    # Code boxes (frames without inner rules) are not mistaken for tables.
    assert doc.tables == 5


def test_table_drawn_in_a_generated_pdf(tmp_path):
    """A PDF drawn here: a 3x3 ruled table between two paragraphs; cells come out as rows, in order."""
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 80), "下表列出三种采购方式。", fontname="china-s", fontsize=11)
    cells = [["方式", "适用情形", "期限"], ["公开招标", "一般情形", "二十日"], ["询价", "规格统一", "三日"]]
    x_edges, y_edges = [72, 172, 322, 422], [100, 124, 148, 172]
    for x in x_edges:
        page.draw_line((x, y_edges[0]), (x, y_edges[-1]))
    for y in y_edges:
        page.draw_line((x_edges[0], y), (x_edges[-1], y))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            page.insert_text((x_edges[c] + 4, y_edges[r] + 16), cell, fontname="china-s", fontsize=11)
    page.insert_text((72, 200), "表后的说明文字。", fontname="china-s", fontsize=11)
    path = tmp_path / "table.pdf"
    pdf.save(path)
    doc = parse_file(path)
    assert doc.tables == 1
    lines = [line for line in doc.pages[0].text.splitlines() if line.strip()]
    assert lines == ["下表列出三种采购方式。", "方式 | 适用情形 | 期限", "公开招标 | 一般情形 | 二十日",
                     "询价 | 规格统一 | 三日", "表后的说明文字。"]


@pytest.mark.parametrize("name, words", [
    ("empty.pdf", "empty file"),
    ("truncated.pdf", "truncated"),
    ("not-a-pdf.pdf", "PNG image"),
    ("encrypted.pdf", "password"),
    ("scanned-image-only.pdf", "OCR"),
])
def test_each_bad_file_gets_its_own_reason(eval_dir, name, words):
    with pytest.raises(ParseError) as info:
        parse_file(eval_dir / "bad" / name)
    assert info.value.path.name == name
    assert words in info.value.reason
    assert str(info.value).startswith(name + ": ")


def test_unsupported_and_text_formats(tmp_path):
    odt = tmp_path / "a.odt"
    odt.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UnsupportedFileError, match="unsupported file type '.odt'"):
        parse_file(odt)

    html = tmp_path / "page.html"
    html.write_text("<html><head><title>采购指南</title><style>p{}</style></head><body><h1>总则</h1>"
                    "<p>第一段。</p><h2>细则</h2><p>第二段&amp;附注。</p><script>x()</script></body></html>",
                    encoding="utf-8")
    doc = parse_file(html)
    assert doc.title == "采购指南"
    assert [(h.level, h.title) for h in doc.headings] == [(1, "总则"), (2, "细则")]
    assert doc.pages[0].text.splitlines() == ["总则", "第一段。", "细则", "第二段&附注。"]

    gbk = tmp_path / "旧文件.txt"
    gbk.write_bytes("政府采购常用术语\n采购人：国家机关。".encode("gb18030"))
    doc = parse_file(gbk)
    assert doc.title == "政府采购常用术语" and "采购人" in doc.pages[0].text

    blank = tmp_path / "blank.md"
    blank.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(ParseError, match="only whitespace"):
        parse_file(blank)
