"""Cleaning and splitting real documents: joined lines, no headers or page numbers, exact page ranges."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from ingest.clean import clean_document, clean_pages
from ingest.parse import Page, parse_file
from ingest.split import split_document


def squeeze(text: str) -> str:
    """The eval set's hit rule: no whitespace, NFKC."""
    return unicodedata.normalize("NFKC", "".join(text.split()))


@pytest.fixture(scope="module")
def parsed(eval_dir):
    names = ["zhengfu-caigou-fa.pdf", "zhaobiao-toubiao-fa-shishi-tiaoli.pdf", "debian-faq-zh-cn.pdf",
             "maint-guide.zh-cn.pdf"]
    return {name: parse_file(eval_dir / "docs" / name) for name in names}


def test_lines_broken_inside_words_are_joined(parsed):
    raw = parsed["zhengfu-caigou-fa.pdf"].pages[0].text
    broken = re.search(r"([\u4e00-\u9fff])\n([\u4e00-\u9fff])", raw)
    assert broken, "expected the PDF to wrap a line inside Chinese text"
    clean = clean_document(parsed["zhengfu-caigou-fa.pdf"]).text
    assert broken.group(1) + broken.group(2) in clean
    # Article 1 was wrapped over two lines and is one line now; article 2 starts its own line.
    lines = clean.splitlines()
    first = next(line for line in lines if line.startswith("第一条"))
    assert first.endswith("促进廉政建设，制定本法。")
    assert any(line.startswith("第二条") for line in lines)


def test_headers_footers_and_page_numbers_are_dropped(parsed):
    guide = clean_document(parsed["maint-guide.zh-cn.pdf"])
    raw_pages = parsed["maint-guide.zh-cn.pdf"].pages
    assert sum(p.text.startswith("Debian 新维护者手册\n") for p in raw_pages) > 50
    assert guide.text.count("Debian 新维护者手册") < 5
    assert not re.search(r"^\d+ / 57$", guide.text, re.MULTILINE)
    faq = clean_document(parsed["debian-faq-zh-cn.pdf"])
    assert not re.search(r"^\d{1,3}$", faq.text, re.MULTILINE)
    # The page-1 sentence that ran over the page break onto page 2 is one line again.
    assert "理论上，用户可以从互联网" in faq.text


def test_full_width_letters_fold_and_chinese_punctuation_stays():
    doc = clean_pages("t", [Page(1, "ＰＤＦ文件共１２页，请查看！")])
    assert doc.text == "PDF文件共12页，请查看！"


def test_repeated_header_needs_most_pages():
    bodies = ["总则规定了适用范围。", "采购人应当编制预算。", "供应商应当具备条件。", "合同应当采用书面形式。"]
    pages = [Page(n, f"机密文件\n{body}\n- {n} -") for n, body in enumerate(bodies, start=1)]
    assert clean_pages("t", pages).text.splitlines() == bodies
    two = [Page(n, f"机密文件\n正文{n}。") for n in range(1, 3)]
    assert clean_pages("t", two).text.splitlines()[0] == "机密文件"


_PAGE_FURNITURE = re.compile(r"^(?:\d{1,3}|\d+ / \d+|[ivx]+|Debian 新维护者手册)$")


def _without_furniture(text: str) -> str:
    """The page's text without page numbers and running headers among its first and last two lines."""
    lines = text.splitlines()
    edges = {0, 1, len(lines) - 2, len(lines) - 1}
    return "\n".join(line for i, line in enumerate(lines) if not (i in edges and _PAGE_FURNITURE.match(line)))
_DOT_LEADER = re.compile(r"(?:\s?[.·…]){5,}")


@pytest.mark.parametrize("name", ["zhengfu-caigou-fa.pdf", "debian-faq-zh-cn.pdf", "maint-guide.zh-cn.pdf"])
def test_chunk_page_ranges_match_the_raw_pages(parsed, name):
    """Checked against the raw parser output, not the offsets the splitter used: a chunk's text lies within
    its pages page_start..page_end, and needs both its first and its last page."""
    doc = parsed[name]
    pages = {p.number: squeeze(_DOT_LEADER.sub("", _without_furniture(p.text))) for p in doc.pages}

    def span(first, last):
        return "".join(pages.get(n, "") for n in range(first, last + 1))

    chunks = split_document(clean_document(doc), 300, 50)
    for chunk in chunks:
        text = squeeze(_DOT_LEADER.sub("", chunk.text))
        assert text in span(chunk.page_start, chunk.page_end), chunk
        if chunk.page_end > chunk.page_start:
            assert text not in span(chunk.page_start + 1, chunk.page_end), chunk
            assert text not in span(chunk.page_start, chunk.page_end - 1), chunk
    assert any(c.page_end > c.page_start for c in chunks), "some chunk should run across a page break"


def test_faq_chunks_carry_their_heading_path_and_gold_page(parsed, eval_dir):
    chunks = split_document(clean_document(parsed["debian-faq-zh-cn.pdf"]), 300, 50)
    items = {json.loads(line)["id"]: json.loads(line) for line in (eval_dir / "qa" / "debian-faq.jsonl").open()}
    item = items["faq-7.1"]
    mine = [c for c in chunks if c.heading.endswith("7.1. 什么是 Debian 软件包？")]
    assert mine and mine[0].heading.startswith("Debian GNU/Linux 常见问题（FAQ） > 第 7 章")
    assert mine[0].page_start in item["pages"]
    assert squeeze(item["answer"])[:20] in squeeze(" ".join(c.text for c in mine))


def test_regulation_chunks_hold_whole_articles_one_to_a_chunk(parsed):
    cleaned = clean_document(parsed["zhaobiao-toubiao-fa-shishi-tiaoli.pdf"])
    chunks = split_document(cleaned, 300, 50)
    articles = re.findall(r"^第[一二三四五六七八九十百零]+条.*(?:\n(?!第[一二三四五六七八九十百零]+[条章节]).*)*",
                          cleaned.text, re.MULTILINE)
    assert len(articles) > 80
    short = [a for a in articles if len(a) <= 300]
    for article in short:
        assert any(article in c.text for c in chunks), article[:30]
    assert all(c.heading.startswith("中华人民共和国招标投标法实施条例") for c in chunks)
    assert all(len(c.text) <= 300 for c in chunks)
    starts = [len(re.findall(r"^第[一二三四五六七八九十百零]+条", c.text, re.MULTILINE)) for c in chunks]
    assert max(starts) == 1 and sum(starts) == len(articles)


def test_long_paragraph_splits_at_sentences_with_overlap():
    sentences = [f"第{n}句话讲的是采购的第{n}个要点，内容比较长一些。" for n in range(1, 30)]
    doc = clean_pages("说明", [Page(1, "".join(sentences[:15])), Page(2, "".join(sentences[15:]))], typeset=False)
    chunks = split_document(doc, 100, 30)
    assert len(chunks) > 5
    overlapping = 0
    for a, b in zip(chunks, chunks[1:]):
        assert a.text.endswith("。") and b.text.startswith("第")  # never cut mid-sentence
        assert len(a.text) <= 100
        overlapping += a.text.split("\n")[-1].split("。")[-2] + "。" == b.text.split("。")[0] + "。"
    assert overlapping >= len(chunks) - 2  # each chunk repeats the last sentence before it (not at the page's line)
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 2
    assert [c.page_start for c in chunks] == sorted(c.page_start for c in chunks)


def test_markdown_sections_give_heading_paths(tmp_path):
    md = tmp_path / "须知.md"
    md.write_text("# 采购须知\n\n总体说明。\n\n## 申请\n\n申请由使用部门填写。\n\n## 验收\n\n### 期限\n\n三日内验收。\n",
                  encoding="utf-8")
    chunks = split_document(clean_document(parse_file(md)), 300, 50)
    assert [(c.heading, c.text) for c in chunks] == [
        ("采购须知", "采购须知\n总体说明。"),
        ("采购须知 > 申请", "申请\n申请由使用部门填写。"),
        # "验收" has no text of its own, so its heading line joins its first subsection's chunk.
        ("采购须知 > 验收 > 期限", "验收\n期限\n三日内验收。"),
    ]
