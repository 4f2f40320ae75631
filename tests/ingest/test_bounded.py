"""Hostile files: parsing stays linear in the file's size, and a file over a limit is refused with a reason
that names the file and the setting. Time bounds are generous (a slow CI machine); bench/README.md has the
measured figures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from ingest.clean import CleanDocument
from ingest.parse import ParseError, parse_file
from ingest.split import split_document
from kbcore.config import LimitSettings

sys.path.insert(0, str(Path(__file__).parent))
from hostile import shared_stream_pdf, text_pdf  # noqa: E402  (beside this file)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs), time.perf_counter() - started
    except ParseError as exc:
        return exc, time.perf_counter() - started


# ------------------------------------------------------------------ linear time
def test_markdown_heading_full_of_spaces_parses_in_linear_time(tmp_path):
    # The old heading regex backtracked cubically: 2,000 spaces took 6.8 s, 10,000 would take minutes.
    path = tmp_path / "heading.md"
    path.write_text("# a" + " " * 10_000 + "b\n正文。\n" + ("## b" + " " * 5_000 + "c #\n") * 20, encoding="utf-8")
    doc, seconds = timed(parse_file, path, LimitSettings(max_heading_chars=20_000))
    assert seconds < 1.0
    assert doc.title == "a" + " " * 10_000 + "b"
    assert len(doc.headings) == 21 and doc.headings[1].title == "b" + " " * 5_000 + "c"


@pytest.mark.parametrize("line, expected", [
    ("## 细则 ##", (2, "细则")), ("#\t标题", (1, "标题")), ("# C#", (1, "C#")), ("#  #", (1, "#")),
    ("#话题", None), ("####### 七级", None), ("#", None), ("#   ", None),
])
def test_markdown_heading_lines(tmp_path, line, expected):
    path = tmp_path / "note.md"
    path.write_text(line + "\n正文。\n", encoding="utf-8")
    doc = parse_file(path)
    assert [(h.level, h.title) for h in doc.headings] == ([expected] if expected else [])


def test_a_long_run_of_dots_splits_in_linear_time():
    # The sentence-end pattern restarted at every dot of a run (quadratic: 8,000 dots took 0.5 s, 100,000 minutes).
    text = "第一句。" + "." * 50_000 + "x。\n" + "." * 50_000 + " 后文。"
    doc = CleanDocument("t", text, [0], [1])
    chunks, seconds = timed(split_document, doc, 300, 50)
    assert seconds < 2.0
    assert "".join(c.text for c in chunks).count(".") >= 100_000


@pytest.mark.parametrize("body", [
    "<!--" * 50_000,  # html.parser: 12 s (quadratic in the unclosed comments)
    "<a" * 70_000,  # html.parser: 9.5 s
    "<![" * 60_000,  # html.parser raised AssertionError
    "<a " + 'b="' * 60_000,
    "<script>" + "</scrip" * 25_000,
    "</" * 100_000 + "<p>",
    "&#" * 100_000,
    "<p>" + "<b>x" * 100_000,
])
def test_malformed_html_parses_in_linear_time(tmp_path, body):
    path = tmp_path / "bad.html"
    path.write_text("<title>页</title><p>正文。</p>" + body, encoding="utf-8")
    doc, seconds = timed(parse_file, path)
    assert seconds < 2.0
    assert not isinstance(doc, ParseError) and doc.pages[0].text.startswith("正文。")


def test_html_text_tables_headings_and_entities(tmp_path):
    path = tmp_path / "page.html"
    path.write_text('<!DOCTYPE html><html><head><title>T &amp; 标题</title><style>p>b{}</style></head><body>'
                    '<!-- note --><h1 class="x">总则</h1><p title="a>b">第一段&lt;甲&gt;。</p>'
                    '<table><tr><td>甲</td><td>乙</td></tr><tr><th>丙</th><td>丁</td></tr></table>'
                    '<script>if (a<b) x("</p>")</script><noscript>开启脚本</noscript>'
                    '<h2>细则<br/>二</h2><p>末段 &#x4E2D;&#25991; &nbsp;x</p></body></html>', encoding="utf-8")
    doc = parse_file(path)
    assert doc.title == "T & 标题"
    assert [(h.level, h.title) for h in doc.headings] == [(1, "总则"), (2, "细则二")]
    assert doc.pages[0].text.splitlines() == ["总则", "第一段<甲>。", "甲 | 乙", "丙 | 丁", "细则", "二", "末段 中文 x"]


# ------------------------------------------------------------------ limits
def test_pdf_pages_sharing_one_huge_stream_are_refused_at_the_first_page(tmp_path):
    path = shared_stream_pdf(tmp_path / "shared.pdf")  # 7 KB: before, 66,614 chunks and 1 GB of memory
    assert path.stat().st_size < 20_000
    error, seconds = timed(parse_file, path)
    assert isinstance(error, ParseError) and seconds < 10.0
    assert str(error).startswith("shared.pdf: page 1 holds 1,010,000 characters")
    assert "limits.max_page_chars" in error.reason
    # With the page limit raised, the limit on the whole file stops it a few pages in.
    error, _ = timed(parse_file, path, LimitSettings(max_page_chars=2_000_000, max_chars=3_000_000))
    assert "over the limit of 3,000,000 (setting limits.max_chars)" in error.reason


def test_pdf_page_count_is_checked_before_any_text(tmp_path):
    path = text_pdf(tmp_path / "long.pdf", [f"第{i}页" for i in range(12)])
    error, _ = timed(parse_file, path, LimitSettings(max_pages=10))
    assert error.reason == "12 pages, over the limit of 10 (setting limits.max_pages)"
    assert parse_file(path, LimitSettings(max_pages=12)).page_count == 12


@pytest.mark.parametrize("name, content, limits, words", [
    ("big.txt", "字" * 5_000, LimitSettings(max_chars=4_000), "5,000 characters of text, over the limit of 4,000"),
    ("huge.txt", "a" * 20_000, LimitSettings(max_chars=4_000), "holds more than 4,000 characters"),
    ("bytes.md", "字" * 1_000, LimitSettings(max_file_mb=0), "over the limit of 0 MB (setting limits.max_file_mb)"),
    ("title.html", "<title>" + "题" * 20_000 + "</title><p>正文</p>", LimitSettings(),
     "a title of 20,000 characters"),
    ("heading.md", "# " + "长" * 20_000 + "\n正文。", LimitSettings(), "a heading of 20,000 characters on page 1"),
    ("many.md", "# 甲\n" * 30, LimitSettings(max_headings=20), "30 headings, over the limit of 20"),
])
def test_text_files_over_a_limit_name_it(tmp_path, name, content, limits, words):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    error, seconds = timed(parse_file, path, limits)
    assert isinstance(error, ParseError) and seconds < 2.0
    assert str(error).startswith(f"{name}: ") and words in error.reason and "setting limits." in error.reason


def test_pdf_outline_heading_over_the_limit(tmp_path):
    path = text_pdf(tmp_path / "outline.pdf", ["第一章 总则", "第二章 附则"],
                    toc=[[1, "第一章 总则", 1], [1, "附" * 600, 2]])
    error, _ = timed(parse_file, path)
    assert "a heading of 600 characters on page 2" in error.reason
    assert [h.title for h in parse_file(path, LimitSettings(max_heading_chars=600)).headings][0] == "第一章 总则"


# ------------------------------------------------------------------ not regular files
@pytest.mark.parametrize("make, words", [
    (lambda p: p.symlink_to("/etc/passwd"), "a symbolic link: links are not followed"),
    (lambda p: p.symlink_to("/dev/zero"), "a symbolic link"),
    (lambda p: os.mkfifo(p), "a FIFO (named pipe): only regular files are ingested"),
])
def test_links_fifos_and_devices_are_refused_without_opening(tmp_path, make, words):
    path = tmp_path / "x.txt"
    make(path)
    error, seconds = timed(parse_file, path)  # a FIFO would block for ever on open()
    assert isinstance(error, ParseError) and seconds < 1.0
    assert str(error) == f"x.txt: {error.reason}" and words in error.reason
