"""Word, Excel and PowerPoint files built from the real text of ../shared/eval PDFs (read by our own PDF parser)
give the same chunks as the PDF, tables as rows in order, and the slide, sheet and row numbers citations show;
bad Office files each fail with their own reason while the rest of the folder is ingested."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from ingest.clean import clean_document
from kbcore.locations import location_label, sheet_and_row
from ingest.parse import TABLE_CELL_SEPARATOR, ParseError, parse_file
from ingest.split import split_document
from kbcore.config import LimitSettings

REGULATION = "zfcg-pingshen-zhuanjia-guanli-banfa.pdf"  # 政府采购评审专家管理办法: a title, chapters, articles
TABLE_PDF, TABLE_PAGE = "maint-guide.zh-cn.pdf", 39  # a ruled table of man page sections


def chunks_of(path: Path, limits: LimitSettings | None = None):
    return split_document(clean_document(parse_file(path, limits)))


@pytest.fixture(scope="module")
def regulation(eval_dir):
    """The regulation's title, its first two chapters as lines of cleaned text, the heading levels of those
    lines, and the PDF's chunks of those chapters."""
    parsed = parse_file(eval_dir / "docs" / REGULATION)
    cleaned = clean_document(parsed)
    end = cleaned.text.index("\n第三章 ")
    chunks = [c for c in split_document(cleaned) if c.end <= end]
    levels = {h.title: h.level for h in parsed.headings}
    return parsed.title, cleaned.text[:end].splitlines(), levels, chunks


@pytest.fixture(scope="module")
def table_rows(eval_dir) -> list[list[str]]:
    """The cells of each row of the PDF's table, as the PDF path writes them."""
    cleaned = clean_document(parse_file(eval_dir / "docs" / TABLE_PDF))
    i = cleaned.page_numbers.index(TABLE_PAGE)
    page = cleaned.text[cleaned.page_starts[i]:cleaned.page_starts[i + 1]]
    rows = [line.split(TABLE_CELL_SEPARATOR) for line in page.splitlines() if TABLE_CELL_SEPARATOR in line]
    assert len(rows) == 10 and rows[0][0] == "Section(部分)" and all(len(r) == 3 for r in rows)
    return rows


def articles(lines: list[str], levels: dict[str, int]) -> list[str]:
    return [line for line in lines if line not in levels]


# ---------------------------------------------------------------------------------------------- .docx
def write_docx(path: Path, lines, levels, rows, break_before: str) -> Path:
    import docx

    doc = docx.Document()
    for line in lines:
        if line == break_before:
            doc.add_page_break()
        if line in levels:
            doc.add_heading(line, levels[line])
        else:
            doc.add_paragraph(line)
    doc.add_heading("附表", 2)
    table = doc.add_table(rows=len(rows), cols=len(rows[0]))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            table.cell(r, c).text = text
    doc.save(path)
    return path


def test_docx_gives_the_pdfs_chunks_pages_from_page_breaks_and_table_rows(tmp_path, regulation, table_rows):
    title, lines, levels, pdf_chunks = regulation
    second = next(line for line in lines if line.startswith("第二章"))
    chunks = chunks_of(write_docx(tmp_path / "办法.docx", lines, levels, table_rows, break_before=second))

    article_chunks = chunks[:len(pdf_chunks)]
    assert [(c.heading, c.text) for c in article_chunks] == [(c.heading, c.text) for c in pdf_chunks]
    assert article_chunks[0].heading == f"{title} > 第一章 总则"
    # The page break before chapter two is the only one: chapter one is page 1, the rest page 2.
    assert [c.page_start for c in article_chunks] == [1 if c.heading.endswith("总则") else 2 for c in pdf_chunks]
    assert {c.page_start for c in article_chunks} == {1, 2}

    table = chunks[len(pdf_chunks):]
    assert {c.heading for c in table} == {f"{title} > 附表"}
    written = [line for c in table for line in c.text.splitlines()]
    assert written == ["附表"] + [TABLE_CELL_SEPARATOR.join(r) for r in table_rows]


def test_docx_sections_are_pages_without_page_breaks_and_chinese_heading_styles(tmp_path):
    import docx
    from docx.enum.section import WD_SECTION

    doc = docx.Document()
    doc.styles.add_style("标题 1", docx.enum.style.WD_STYLE_TYPE.PARAGRAPH)
    doc.add_paragraph("第一章 总则", style="标题 1")
    doc.add_paragraph("第一条 正文在第一节。")
    doc.add_section(WD_SECTION.CONTINUOUS)  # goes on on the same page
    doc.add_paragraph("第二条 同一页上的连续节。")
    doc.add_section(WD_SECTION.NEW_PAGE)
    doc.add_paragraph("第二章 附则", style="标题 1")
    doc.add_paragraph("第三条 第二页。")
    doc.add_section(WD_SECTION.CONTINUOUS)  # the last section: its properties are the body's own
    doc.add_paragraph("第四条 仍在第二页。")
    doc.add_paragraph("第五条 段前分页。").paragraph_format.page_break_before = True
    doc.save(tmp_path / "节.docx")
    parsed = parse_file(tmp_path / "节.docx")
    assert [(h.level, h.title, h.page) for h in parsed.headings] == [(1, "第一章 总则", 1), (1, "第二章 附则", 2)]
    assert [p.text for p in parsed.pages] == ["第一章 总则\n第一条 正文在第一节。\n第二条 同一页上的连续节。",
                                             "第二章 附则\n第三条 第二页。\n第四条 仍在第二页。", "第五条 段前分页。"]


# ---------------------------------------------------------------------------------------------- .xlsx
def write_xlsx(path: Path, table_rows, article_lines) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "man 手册章节"
    for row in table_rows:
        sheet.append(row)
    rules = book.create_sheet("条文")
    rules["A1"] = "政府采购评审专家管理办法 摘录"  # a title row above the header
    rules.append(["序号", "条文"])
    for n, text in enumerate(article_lines, 1):
        rules.append([n, text])
    book.save(path)
    return path


def test_xlsx_rows_carry_their_header_and_cite_sheet_and_rows(tmp_path, regulation, table_rows):
    _title, lines, levels, _chunks = regulation
    texts = articles(lines, levels)[:6]
    chunks = chunks_of(write_xlsx(tmp_path / "摘录.xlsx", table_rows, texts))

    first = [c for c in chunks if c.heading == "摘录 > man 手册章节"]
    header = table_rows[0]
    expected = ["man 手册章节", " | ".join(header)] + [
        " | ".join(f"{h}: {v}" for h, v in zip(header, row)) for row in table_rows[1:]]
    assert [line for c in first for line in c.text.splitlines()] == expected
    # Each chunk cites the rows its lines came from, in the first sheet: row 1 is the header.
    assert first[0].page_start == 1_000_001 and first[-1].page_end == 1_000_010
    for c in first:
        sheet, row = sheet_and_row(c.page_start)
        assert sheet == 1 and c.page_end - c.page_start + 1 == len(c.text.splitlines()) - (row == 1)

    second = [c for c in chunks if c.heading == "摘录 > 条文"]
    assert len(first) + len(second) == len(chunks)
    for c in second:  # row 1 is the title, row 2 the header, article n is row n + 2
        (sheet, low), (_, high) = sheet_and_row(c.page_start), sheet_and_row(c.page_end)
        held = [n for n, text in enumerate(texts, 1) if f"序号: {n} | 条文: {text}" in c.text.splitlines()]
        assert sheet == 2 and [n + 2 for n in held] == list(range(max(low, 3), high + 1))
    assert sheet_and_row(second[0].page_start) == (2, 1) and sheet_and_row(second[-1].page_end) == (2, len(texts) + 2)
    last = second[-1]
    assert location_label("摘录.xlsx", [last.page_start, last.page_end], last.heading) == \
        f"sheet 条文 rows {sheet_and_row(last.page_start)[1]}–{len(texts) + 2}"


def test_xlsx_sparse_sheet_is_bounded(tmp_path):
    """A sheet whose cells span a million rows and sixteen thousand columns reads the cells that exist."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active["XFD1"] = "最右"
    book.active["A900000"] = "最下"
    book.save(tmp_path / "稀疏.xlsx")
    started = time.perf_counter()
    parsed = parse_file(tmp_path / "稀疏.xlsx")
    assert [(p.number, p.text) for p in parsed.pages] == [(1_000_001, "Sheet\n最右"), (1_900_000, "最下")]
    with pytest.raises(ParseError, match=r"more than 100,000 cells and characters.*limits.max_chars"):
        parse_file(tmp_path / "稀疏.xlsx", LimitSettings(max_chars=100_000))
    assert time.perf_counter() - started < 10


# ---------------------------------------------------------------------------------------------- .pptx
def write_pptx(path: Path, title, chapter, article_lines, table_rows) -> Path:
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    cover = deck.slides.add_slide(deck.slide_layouts[0])
    cover.shapes.title.text = title
    cover.placeholders[1].text = "财政部"
    body = deck.slides.add_slide(deck.slide_layouts[1])
    body.shapes.title.text = chapter
    body.placeholders[1].text = "\n".join(article_lines[:2])
    rows = deck.slides.add_slide(deck.slide_layouts[5])
    rows.shapes.title.text = "附表"
    table = rows.shapes.add_table(len(table_rows), 3, Inches(0.5), Inches(1.5), Inches(9), Inches(5)).table
    for r, cells in enumerate(table_rows):
        for c, text in enumerate(cells):
            table.cell(r, c).text = text
    rows.notes_slide.notes_text_frame.text = "本表摘自 Debian 新维护者手册。"
    loose = deck.slides.add_slide(deck.slide_layouts[6])  # blank: no title
    loose.shapes.add_textbox(Inches(1), Inches(1), Inches(8), Inches(3)).text_frame.text = article_lines[2]
    deck.save(path)
    return path


def test_pptx_slides_are_pages_with_titles_tables_and_notes(tmp_path, regulation, table_rows):
    title, lines, levels, pdf_chunks = regulation
    texts = articles(lines, levels)
    chunks = chunks_of(write_pptx(tmp_path / "培训.pptx", title, "第一章 总则", texts, table_rows))

    slide_of = {line: c.page_start for c in chunks for line in c.text.splitlines()}
    assert slide_of[title] == 1 and slide_of["财政部"] == 1 and slide_of["第一章 总则"] == 2
    # The articles come out as the PDF's chunks of the same articles (the first without the document title
    # line, which is on the cover slide here), cited by the slide that shows them.
    for n, text in enumerate(texts[:3]):
        pdf = next(c for c in pdf_chunks if c.text.endswith(text))
        ours = next(c for c in chunks if c.text.endswith(text))
        assert ours.text == (pdf.text if n else pdf.text.removeprefix(title + "\n"))
        assert ours.page_start == ours.page_end == (2 if n < 2 else 4)
        assert n == 2 or ours.heading == pdf.heading
    rows_slide = [c for c in chunks if c.page_start == 3]
    written = [line for c in rows_slide for line in c.text.splitlines()]
    assert written == ["附表"] + [TABLE_CELL_SEPARATOR.join(r) for r in table_rows] + ["本表摘自 Debian 新维护者手册。"]
    assert {c.heading for c in rows_slide} == {f"{title} > 附表"}
    assert location_label("培训.pptx", [3]) == "slide 3"


# ---------------------------------------------------------------------------------------------- bad files
def small_docx(text: str = "第一条 本办法自发布之日起施行。") -> bytes:
    import docx

    doc = docx.Document()
    doc.add_paragraph(text)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def encrypted(data: bytes) -> bytes:
    """A real password-protected Office file: the zip encrypted into an OLE container (ECMA-376 agile)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(data)).encrypt("口令", out)
    return out.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
BAD_FILES = {  # name: (bytes, words its reason must hold)
    "旧版.doc": (lambda: OLE_HEADER, "old Word 97-2003 format (.doc), which is not read: save it as .docx"),
    "旧版.xls": (lambda: OLE_HEADER, "save it as .xlsx"),
    "旧版.ppt": (lambda: OLE_HEADER, "save it as .pptx"),
    "加密.docx": (lambda: encrypted(small_docx()), "password-protected (encrypted) Word document"),
    "改名.docx": (lambda: OLE_HEADER, "an old binary Office file with a .docx name"),
    "截断.docx": (lambda: small_docx()[:5000], "damaged Word document (truncated or corrupt zip container"),
    "图片.pptx": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PowerPoint deck: the content is a PNG image"),
    "空壳.xlsx": (lambda: zip_of({"a.txt": b"x"}), "damaged or not an Excel workbook"),
    "炸弹.xlsx": (lambda: zip_of({"xl/big.xml": bytes(2 * 2**20)}), "unpacks to 2 MB, over the limit of 1 MB"),
    "碎片.pptx": (lambda: zip_of({f"p/{i}.xml": b"" for i in range(300)}), "zip container of 300 members"),
}
LIMITS = {"max_file_mb": 1, "max_pages": 20}  # small limits keep the zip bombs small


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_office_file_gets_its_own_reason(tmp_path, name):
    make, words = BAD_FILES[name]
    (tmp_path / name).write_bytes(make())
    with pytest.raises(ParseError) as info:
        parse_file(tmp_path / name, LimitSettings(**LIMITS))
    assert str(info.value).startswith(name + ": ") and words in info.value.reason


def test_entity_expansion_is_refused(tmp_path):
    """A document.xml that defines nested entities (a "billion laughs") fails at once instead of expanding."""
    laughs = '<!DOCTYPE w:document [<!ENTITY a "哈哈哈哈哈哈哈哈哈哈">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + "]>"
    with zipfile.ZipFile(io.BytesIO(small_docx("MARK"))) as archive:
        members = {m: archive.read(m) for m in archive.namelist()}
    xml = members["word/document.xml"].decode()
    members["word/document.xml"] = xml.replace("?>", "?>" + laughs, 1).replace("MARK", "&j;").encode()
    (tmp_path / "笑.docx").write_bytes(zip_of(members))
    with pytest.raises(ParseError, match="damaged or not a Word document"):
        parse_file(tmp_path / "笑.docx")


@pytest.mark.slow
def test_folder_ingests_good_office_files_and_keeps_the_stored_version_of_a_bad_one(tmp_path, settings,
                                                                                   regulation, table_rows):
    from ingest.pipeline import ingest_folder
    from kbcore.store import KnowledgeBase

    title, lines, levels, _chunks = regulation
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    texts = articles(lines, levels)
    write_xlsx(docs / "摘录.xlsx", table_rows[:4], texts[:3])
    write_pptx(docs / "培训.pptx", title, "第一章 总则", texts, table_rows[:3])
    (docs / "办法.docx").write_bytes(small_docx(texts[0]))
    settings = settings.with_overrides(limits=LIMITS)
    first = ingest_folder(docs, settings, kb_path=kb_path)
    assert first.summary()["files_added"] == 3 and not first.failures

    for name, (make, _words) in BAD_FILES.items():
        (docs / name).write_bytes(make())
    (docs / "办法.docx").write_bytes(small_docx(texts[1])[:5000])  # the stored version must survive this
    report = ingest_folder(docs, settings, kb_path=kb_path)
    reasons = {r.source: r.reason for r in report.failures}
    assert set(reasons) == set(BAD_FILES) | {"办法.docx"}
    assert all(words in reasons[name] for name, (_make, words) in BAD_FILES.items())
    assert "(the previously ingested version is kept)" in reasons["办法.docx"]
    assert report.count("skipped") == 2  # the unchanged workbook and deck

    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        assert {d.source for d in kb.documents()} == {"摘录.xlsx", "培训.pptx", "办法.docx"}
        assert [c.text for c in kb.chunks("办法.docx")] == [texts[0]]
    finally:
        kb.close()


# ---------------------------------------------------------------------------------------------- damage, per kind
def small_office(kind: str) -> bytes:
    """A real small file of each kind, with a few lines of text."""
    out = io.BytesIO()
    if kind == "docx":
        return small_docx("第一条 为了规范政府采购行为，制定本法。")
    if kind == "xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        for row in (["条目", "内容"], ["第一条", "为了规范政府采购行为，制定本法。"], ["第二条", "本法适用于政府采购。"]):
            book.active.append(row)
        book.save(out)
    else:
        import pptx

        deck = pptx.Presentation()
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = "政府采购法"
        slide.placeholders[1].text = "第一条 为了规范政府采购行为，制定本法。"
        deck.save(out)
    return out.getvalue()


def flipped(data: bytes) -> bytes:
    """Bytes flipped inside the compressed data of the biggest member: the zip opens, that member fails."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        biggest = max(archive.infolist(), key=lambda m: m.compress_size)
    start = biggest.header_offset + 30 + len(biggest.filename.encode()) + len(biggest.extra)
    middle = start + biggest.compress_size // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]


def lying_sizes(data: bytes) -> bytes:
    """Every member's declared unpacked size set to 1 byte, so a size check alone would pass any bomb."""
    import struct

    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
    for m in members:
        struct.pack_into("<I", out, m.header_offset + 22, 1)  # local header: uncompressed size
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) >= 0:  # central directory entries
        struct.pack_into("<I", out, at + 24, 1)
        at += 4
    return bytes(out)


def bomb(kind: str) -> bytes:
    """The real file with its main part padded by 30 MB of spaces (about 30 KB deflated)."""
    main = {"docx": "word/document.xml", "xlsx": "xl/worksheets/sheet1.xml", "pptx": "ppt/slides/slide1.xml"}[kind]
    with zipfile.ZipFile(io.BytesIO(small_office(kind))) as archive:
        members = {m: archive.read(m) for m in archive.namelist()}
    members[main] += b" " * (30 * 2**20)  # whitespace after the root element is still well-formed XML
    return zip_of(members)


def future_version(data: bytes) -> bytes:
    """Every central-directory entry says it needs zip version 6.5 to extract, which Python's zipfile refuses."""
    import struct

    out = bytearray(data)
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) >= 0:
        struct.pack_into("<H", out, at + 6, 65)  # version needed to extract
        at += 4
    return bytes(out)


DAMAGE = {  # (make, words the reason must hold)
    "truncated": (lambda kind: small_office(kind)[:len(small_office(kind)) // 2], "truncated or corrupt zip container"),
    "flipped": (lambda kind: flipped(small_office(kind)), "damaged or not a"),
    "lying-sizes": (lambda kind: lying_sizes(small_office(kind)), "damaged or not a"),
    "bomb": (bomb, "over the limit of 1 MB (setting limits.max_file_mb)"),
    "future-version": (lambda kind: future_version(small_office(kind)), "truncated or corrupt zip container"),
}


@pytest.mark.parametrize("kind", ["docx", "xlsx", "pptx"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_kind_damaged_each_way_fails_quickly_with_its_reason(tmp_path, kind, damage):
    make, words = DAMAGE[damage]
    path = tmp_path / f"坏的.{kind}"
    path.write_bytes(make(kind))
    (tmp_path / f"好的.{kind}").write_bytes(small_office(kind))
    assert parse_file(tmp_path / f"好的.{kind}", LimitSettings(**LIMITS)).pages  # undamaged, it reads
    started = time.perf_counter()
    with pytest.raises(ParseError) as info:
        parse_file(path, LimitSettings(**LIMITS))
    assert time.perf_counter() - started < 5
    assert str(info.value).startswith(path.name + ": ") and words in info.value.reason, info.value.reason
