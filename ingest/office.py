"""Word, Excel and PowerPoint files (.docx, .xlsx, .pptx) as pages of text with headings and tables as rows.

- ``.docx``: paragraphs in body order; a paragraph in a heading style ("Heading 1", "标题 2", or a style or
  paragraph with an outline level) is a heading. A new page starts at each explicit page break (a page
  break character, "page break before", a section break that starts a new page), so without explicit breaks
  each section is a page. Word's layout of the rest is not known here.
- ``.xlsx``: each sheet a section headed by its name, each non-empty row a line. The first row of two or
  more filled cells, when they are all text, is the header (rows above it, such as a title, are lines of
  their own): it is a line too, and every later row carries it as ``表头: 值`` pairs, so a row read alone
  (in a chunk without the header) still says what its numbers are. A row's page number encodes sheet and
  row (``kbcore.locations.sheet_row_page``), so a chunk's pages are its row range within its sheet.
- ``.pptx``: each slide a page (page number = slide number), its title the heading, then the text frames and
  tables in the slide's order, then the speaker notes.

Table rows are written like PDF tables (``parse.TABLE_CELL_SEPARATOR`` between cells, a cell's lines joined).

Office files are zip containers. Before a library opens one, its members' declared sizes and count are held
to the limits: Python's zipfile never inflates a member past its declared size (a lie fails the CRC check),
so a zip bomb is refused before any work. A password-protected file is not a zip but an OLE container with
an ``EncryptedPackage`` stream; old binary formats (.doc/.xls/.ppt) are refused with how to convert them.
"""

from __future__ import annotations

import datetime
import re
import zipfile
from pathlib import Path
from typing import Iterator

from kbcore.config import LimitSettings
from kbcore.locations import ROWS_PER_SHEET, sheet_row_page
from ingest.parse import (_MAGIC_NAMES, _USELESS_TITLE, TABLE_CELL_SEPARATOR, Heading, Page, ParsedDocument,
                          ParseError, _cell_text, _check_chars, _first_line)

# What each kind is called in messages, and the suffix its legacy binary format had.
KIND_NAMES = {"docx": "Word document", "xlsx": "Excel workbook", "pptx": "PowerPoint deck"}
LEGACY_FORMATS = {".doc": ("docx", "Word 97-2003"), ".xls": ("xlsx", "Excel 97-2003"),
                  ".ppt": ("pptx", "PowerPoint 97-2003")}

# A deck needs about four members a slide (slide, notes, and their relationship files) besides those its
# template brings (layouts, masters, themes); a document or workbook far fewer a page. More is a zip built
# to make work, so members are held to MEMBERS_PER_PAGE * max_pages + TEMPLATE_MEMBERS.
MEMBERS_PER_PAGE = 4
TEMPLATE_MEMBERS = 200

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# The stream an encrypted OOXML file keeps its zip in; OLE directory names are UTF-16LE.
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")


def legacy_reason(suffix: str) -> str:
    """Why an old binary Office file is not read, and how to make one that is.

    >>> print(legacy_reason(".xls"))  # doctest: +NORMALIZE_WHITESPACE
    old Excel 97-2003 format (.xls), which is not read: save it as .xlsx
    (Office or WPS: Save As; LibreOffice: soffice --headless --convert-to xlsx FILE) and ingest that
    """
    new, name = LEGACY_FORMATS[suffix]
    return (f"old {name} format ({suffix}), which is not read: save it as .{new} (Office or WPS: Save As; "
            f"LibreOffice: soffice --headless --convert-to {new} FILE) and ingest that")


def parse_office(path: Path, kind: str, limits: LimitSettings) -> ParsedDocument:
    """Parse a .docx, .xlsx or .pptx file; any failure is a ``ParseError`` naming the file and the reason."""
    check_container(path, kind, limits)
    parse = {"docx": _parse_docx, "xlsx": _parse_xlsx, "pptx": _parse_pptx}[kind]
    try:
        return parse(path, limits)
    except ParseError:
        raise
    except Exception as exc:  # zipfile, lxml, KeyError for a missing part, ValueError for a wrong content type
        raise ParseError(path, f"damaged or not {_a(KIND_NAMES[kind])}: {type(exc).__name__}: {exc}") from None


def check_container(path: Path, kind: str, limits: LimitSettings) -> None:
    """Refuse, with the reason, what is not a zip within the limits: an encrypted or old binary file, another
    file type, a damaged zip, or one that unpacks to too much (a zip bomb)."""
    what = KIND_NAMES[kind]
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_OLE_MAGIC):
        if _holds(path, _ENCRYPTED_STREAM):
            raise ParseError(path, f"password-protected (encrypted) {what}: save a copy without a password "
                                   f"to ingest it")
        raise ParseError(path, f"an old binary Office file with a .{kind} name: open it and save it as .{kind}")
    if not head.startswith(b"PK\x03\x04"):
        found = next((name for magic, name in _MAGIC_NAMES.items() if head.startswith(magic)), "not a zip container")
        raise ParseError(path, f"not {_a(what)}: the content is {found}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    # NotImplementedError: a zip version or compression method Python cannot read ("zip file version 6.5").
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise ParseError(path, f"damaged {what} (truncated or corrupt zip container: {exc})") from None
    most = MEMBERS_PER_PAGE * limits.max_pages + TEMPLATE_MEMBERS
    if len(members) > most:
        raise ParseError(path, f"zip container of {len(members):,} members, over the limit of {most:,} "
                               f"({MEMBERS_PER_PAGE} a page and {TEMPLATE_MEMBERS}; setting limits.max_pages)")
    unpacked = sum(m.file_size for m in members)
    if unpacked > limits.max_file_mb * 2**20:
        raise ParseError(path, f"unpacks to {unpacked / 2**20:,.0f} MB, over the limit of {limits.max_file_mb} MB "
                               f"(setting limits.max_file_mb)")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "AEIOU" else "a ") + noun


def _holds(path: Path, needle: bytes, block: int = 1 << 20) -> bool:
    """Whether the file's bytes contain ``needle``, read a block at a time (the file is within max_file_mb)."""
    tail = b""
    with open(path, "rb") as fh:
        for data in iter(lambda: fh.read(block), b""):
            if needle in tail + data:
                return True
            tail = data[-len(needle):]
    return False


class _Budget:
    """Characters (and, for workbooks, cells visited) counted as they come, so a huge file stops early."""

    def __init__(self, path: Path, limits: LimitSettings, what: str = "characters of text"):
        self.path, self.limit, self.what, self.used = path, limits.max_chars, what, 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ParseError(self.path, f"more than {self.limit:,} {self.what}, the limit (setting limits.max_chars)")


def _title(meta: str | None, found: str, pages: list[Page], path: Path, limits: LimitSettings) -> str:
    """The metadata title unless it says nothing, else the title found in the text, else the first line."""
    meta = (meta or "").strip()[:limits.max_heading_chars]
    return (meta if not _USELESS_TITLE.match(meta) else "") or found or _first_line(pages) or path.stem


def _no_text(path: Path, kind: str, pages: list[Page]) -> None:
    if not any(p.text.strip() for p in pages):
        raise ParseError(path, f"no text: the {KIND_NAMES[kind]} holds no text to ingest")


# ---------------------------------------------------------------------------------------------- .docx
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
# Text boxes are written twice (a drawing and its VML fallback), tracked deletions and moves keep old text.
_SKIPPED = {"{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback", f"{_W}del", f"{_W}moveFrom",
            f"{_W}pPr", f"{_W}rPr", f"{_W}sectPr", f"{_W}tblPr", f"{_W}tcPr", f"{_W}trPr"}
_INLINE = {f"{_W}tab": "\t", f"{_W}ptab": "\t", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.IGNORECASE)
_TITLE_STYLE = re.compile(r"^(?:title|标题)$", re.IGNORECASE)
_PAGE_BREAK = None  # what _docx_text yields for an explicit page break


def _on(element) -> bool:
    """An OOXML on/off property: present and not switched off."""
    return element is not None and element.get(f"{_W}val", "true") not in ("0", "false", "off")


def _docx_text(element) -> Iterator[str | None]:
    """The text under ``element`` in order; ``_PAGE_BREAK`` for an explicit page break, "\\n" between
    paragraphs nested in it (table cells, text boxes)."""
    for child in element:
        tag = child.tag
        if tag in _SKIPPED:
            continue
        if tag == f"{_W}t":
            yield child.text or ""
        elif tag == f"{_W}br":
            yield _PAGE_BREAK if child.get(f"{_W}type") == "page" else "\n"
        elif tag in _INLINE:
            yield _INLINE[tag]
        else:
            if tag == f"{_W}p":
                yield "\n"
            yield from _docx_text(child)


def _docx_blocks(parent) -> Iterator:
    """Paragraphs and tables of the body in order, including those inside content controls."""
    for child in parent:
        if child.tag in (f"{_W}p", f"{_W}tbl"):
            yield child
        elif child.tag in (f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml"):
            yield from _docx_blocks(child)


class _DocxStyles:
    """Per paragraph style id: its heading level (or 0), whether it is the title style, page break before."""

    def __init__(self, styles_element):
        self.level: dict[str, int] = {}
        self.title: set[str] = set()
        self.break_before: set[str] = set()
        for style in styles_element.iter(f"{_W}style"):
            sid = style.get(f"{_W}styleId") or ""
            name_el = style.find(f"{_W}name")
            name = (name_el.get(f"{_W}val") if name_el is not None else "") or ""
            match = _HEADING_STYLE.match(name.strip())
            outline = style.find(f"{_W}pPr/{_W}outlineLvl")
            self.level[sid] = int(match[1]) if match else _outline_level(outline)
            if _TITLE_STYLE.match(name.strip()):
                self.title.add(sid)
            if _on(style.find(f"{_W}pPr/{_W}pageBreakBefore")):
                self.break_before.add(sid)

    def breaks_before(self, p) -> bool:
        return _on(p.find(f"{_W}pPr/{_W}pageBreakBefore")) or _style_id(p) in self.break_before

    def heading_level(self, p) -> int:
        direct = _outline_level(p.find(f"{_W}pPr/{_W}outlineLvl"))
        return direct or self.level.get(_style_id(p), 0)


def _outline_level(element) -> int:
    """Heading level 1-9 of an outline level 0-8; 0 for none (9 is body text)."""
    value = element.get(f"{_W}val", "") if element is not None else ""
    return int(value) + 1 if value.isdigit() and int(value) < 9 else 0


def _style_id(p) -> str:
    style = p.find(f"{_W}pPr/{_W}pStyle")
    return (style.get(f"{_W}val") if style is not None else "") or ""


class _Pages:
    """Lines gathered page by page. A break is applied when the next line comes, so breaks at the end make
    no empty page, while two breaks in a row leave the blank page between them."""

    def __init__(self, path: Path, limits: LimitSettings):
        self.path, self.limits = path, limits
        self.lines: list[list[str]] = [[]]
        self.pending = 0
        self.started = False  # whether any line has been written
        self.budget = _Budget(path, limits)

    def page_break(self) -> None:
        self.pending += 1

    def add(self, line: str) -> int:
        """Add a line; returns the page it is on."""
        if self.pending:
            if len(self.lines) + self.pending > self.limits.max_pages:
                raise ParseError(self.path, f"more than {self.limits.max_pages:,} pages, the limit "
                                            f"(setting limits.max_pages)")
            self.lines.extend([] for _ in range(self.pending))
            self.pending = 0
        self.lines[-1].append(line)
        self.started = True
        self.budget.spend(len(line) + 1)
        return len(self.lines)

    def pages(self) -> list[Page]:
        return [Page(n, "\n".join(lines)) for n, lines in enumerate(self.lines, 1)]


def _parse_docx(path: Path, limits: LimitSettings) -> ParsedDocument:
    import docx

    document = docx.Document(str(path))
    body = document.element.body
    styles = _DocxStyles(document.styles.element)
    section_types = _section_types(body)
    out, headings, tables, sections, title = _Pages(path, limits), [], 0, 0, ""
    for block in _docx_blocks(body):
        if block.tag == f"{_W}tbl":
            tables += 1
            _docx_table(block, out)
            continue
        if out.started and styles.breaks_before(block):  # Word starts no blank page 1 for it
            out.page_break()
        text, page = _docx_paragraph(block, out)
        level = styles.heading_level(block)
        if text and level and len(text) <= limits.max_heading_chars:  # a longer one is a mis-styled paragraph
            headings.append(Heading(level, text, page))
        elif text and not title and _style_id(block) in styles.title:
            title = text
        if block.find(f"{_W}pPr/{_W}sectPr") is not None:  # the last paragraph of a section
            sections += 1
            if sections < len(section_types) and section_types[sections] != "continuous":
                out.page_break()
    pages = out.pages()
    _no_text(path, "docx", pages)
    found = title or (headings[0].title if headings else "")
    return ParsedDocument(path, "docx", _title(document.core_properties.title, found, pages, path, limits),
                          pages, headings, tables)


def _section_types(body) -> list[str]:
    """How each section starts, in order: a section starts a new page unless it is "continuous". The last
    section's properties sit in the body, the others' in their last paragraph."""
    found = [block.find(f"{_W}pPr/{_W}sectPr") for block in _docx_blocks(body)] + [body.find(f"{_W}sectPr")]
    found = [s for s in found if s is not None]
    return [(s.find(f"{_W}type").get(f"{_W}val", "nextPage") if s.find(f"{_W}type") is not None else "nextPage")
            for s in found]


def _docx_paragraph(p, out: _Pages) -> tuple[str, int]:
    """Write a paragraph's lines, starting a page at each page break in it; (its text, its first page)."""
    parts: list[list[str]] = [[]]
    for piece in _docx_text(p):
        if piece is _PAGE_BREAK:
            parts.append([])
        else:
            parts[-1].append(piece)
    first_page = 0
    for i, part in enumerate(parts):
        if i:
            out.page_break()
        for line in "".join(part).replace("\t", " ").split("\n"):
            if line.strip():
                page = out.add(line)
                first_page = first_page or page
    return " ".join("".join(piece for part in parts for piece in part).split()), first_page


def _docx_table(table, out: _Pages) -> None:
    """One line per row, cells as in PDF tables; a nested table's text stays inside its cell. A page break
    inside the table starts the page after it."""
    breaks = 0
    for row in table.iterfind(f"{_W}tr"):
        cells = []
        for cell in row.iterfind(f"{_W}tc"):
            pieces = list(_docx_text(cell))
            breaks += pieces.count(_PAGE_BREAK)
            cells.append(_cell_text("".join(p for p in pieces if p is not _PAGE_BREAK).replace("\t", " ")))
        line = TABLE_CELL_SEPARATOR.join(cells)
        if line.strip(" |"):
            out.add(line)
    for _ in range(breaks):
        out.page_break()


# ---------------------------------------------------------------------------------------------- .xlsx
def _parse_xlsx(path: Path, limits: LimitSettings) -> ParsedDocument:
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        # Empty cells cost reading time too (a sparse sheet can span a million rows), so they count.
        budget = _Budget(path, limits, "cells and characters")
        pages: list[Page] = []
        headings: list[Heading] = []
        for number, name in enumerate(workbook.sheetnames, 1):
            sheet = workbook[name]
            if not hasattr(sheet, "iter_rows"):
                continue  # a chart sheet holds no cells
            sheet_pages = _sheet_pages(path, sheet, number, budget)
            if sheet_pages:
                headings.append(Heading(1, name, sheet_pages[0].number))
                pages += sheet_pages
        meta = workbook.properties.title if workbook.properties is not None else ""
    finally:
        workbook.close()
    if not pages:
        raise ParseError(path, "no text: every sheet of the Excel workbook is empty")
    return ParsedDocument(path, "xlsx", _title(meta, "", [], path, limits), pages, headings, len(headings))


def _sheet_pages(path: Path, sheet, number: int, budget: _Budget) -> list[Page]:
    """One page per non-empty row, numbered by ``sheet_row_page``; the first one opens with the sheet's name,
    the line the splitter finds its heading by."""
    # The stored dimension can claim a million rows of sixteen thousand columns: read the cells that exist.
    sheet.reset_dimensions()
    pages: list[Page] = []
    header: list[str] | None = None  # None while rows above the table (a title line) may come first
    for row, cells in enumerate(sheet.iter_rows(), 1):
        budget.spend(max(1, len(cells)))
        values = [_cell_value(c) for c in cells]
        if not any(values):
            continue
        if row >= ROWS_PER_SHEET:
            raise ParseError(path, f"sheet {sheet.title!r} has data in row {row:,}, past the {ROWS_PER_SHEET - 1:,} "
                                   f"rows a sheet may have here")
        line = _row_line(values, header or [])
        if header is None and sum(map(bool, values)) >= 2:
            header = values if _all_text(cells) else []
        budget.spend(len(line))
        pages.append(Page(sheet_row_page(number, row), line if pages else f"{sheet.title}\n{line}"))
    return pages


def _all_text(cells) -> bool:
    """Whether every filled cell holds text: then the row names the columns below it."""
    return all(isinstance(c.value, str) for c in cells if c.value is not None and str(c.value).strip())


def _row_line(values: list[str], header: list[str]) -> str:
    """A row as PDF tables are written, each value after its column's name when there is a header; empty
    cells are left out (without a header their place says nothing, and a sparse row would be all separators).

    >>> _row_line(["张三", "", "30"], ["姓名", "部门", "年龄"]), _row_line(["", "a", "", "b"], [])
    ('姓名: 张三 | 年龄: 30', 'a | b')
    """
    return TABLE_CELL_SEPARATOR.join(f"{header[i]}: {v}" if i < len(header) and header[i] else v
                                     for i, v in enumerate(values) if v)


def _cell_value(cell) -> str:
    """A cell as the sheet shows it: whole numbers without ".0", percentages with "%", dates without a
    midnight time, no binary float noise (0.1 + 0.2 shows as 0.3).

    >>> from types import SimpleNamespace as C
    >>> [_cell_value(C(value=v, number_format=f)) for v, f in [(3.0, "General"), (0.1 + 0.2, "General"),
    ...  (0.05, "0%"), (datetime.datetime(2024, 5, 1), "yyyy-mm-dd"), (True, "General"), (" 甲\\n乙 ", "@")]]
    ['3', '0.3', '5%', '2024-05-01', 'TRUE', '甲乙']
    """
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        if "%" in (getattr(cell, "number_format", "") or ""):
            return f"{value * 100:.15g}%"
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return str(value) if isinstance(value, int) else f"{value:.15g}"
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    return _cell_text(str(value).replace("\t", " "))


# ---------------------------------------------------------------------------------------------- .pptx
def _parse_pptx(path: Path, limits: LimitSettings) -> ParsedDocument:
    import pptx

    deck = pptx.Presentation(str(path))
    if len(deck.slides) > limits.max_pages:
        raise ParseError(path, f"{len(deck.slides):,} slides, over the limit of {limits.max_pages:,} "
                               f"(setting limits.max_pages)")
    budget = _Budget(path, limits)
    pages: list[Page] = []
    headings: list[Heading] = []
    tables = 0
    for number, slide in enumerate(deck.slides, 1):
        title, lines, found = _slide_lines(slide)
        text = "\n".join(lines)
        _check_chars(path, limits, len(text), number)
        budget.spend(len(text))
        if title and len(title) <= limits.max_heading_chars:
            headings.append(Heading(1, title, number))
        pages.append(Page(number, text))
        tables += found
    _no_text(path, "pptx", pages)
    found_title = headings[0].title if headings else ""
    return ParsedDocument(path, "pptx", _title(deck.core_properties.title, found_title, pages, path, limits),
                          pages, headings, tables)


def _slide_lines(slide) -> tuple[str, list[str], int]:
    """(title, lines, tables) of a slide: the title first, then the shapes' text and tables in the slide's
    order, then the speaker notes."""
    title_shape = slide.shapes.title
    title = " ".join(_frame_lines(title_shape.text_frame)) if title_shape is not None else ""
    lines, tables = [title] if title else [], 0
    for shape in _shapes(slide.shapes):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue
        if shape.has_text_frame:
            lines += _frame_lines(shape.text_frame)
        elif getattr(shape, "has_table", False) and shape.has_table:
            tables += 1
            lines += _pptx_table_rows(shape.table)
    if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
        lines += _frame_lines(slide.notes_slide.notes_text_frame)
    return title, lines, tables


def _shapes(shapes) -> Iterator:
    """The shapes in order, those inside groups where the group stands."""
    for shape in shapes:
        if hasattr(shape, "shapes"):  # a group
            yield from _shapes(shape.shapes)
        else:
            yield shape


def _frame_lines(frame) -> list[str]:
    """A text frame's non-empty lines; a soft line break ("\\v") ends a line too."""
    return [line for line in frame.text.replace("\v", "\n").split("\n") if line.strip()]


def _pptx_table_rows(table) -> list[str]:
    """One line per row, cells as in PDF tables; a merged cell once, not once per column it spans."""
    rows = []
    for row in table.rows:
        line = TABLE_CELL_SEPARATOR.join(_cell_text(cell.text.replace("\v", "\n"))
                                         for cell in row.cells if not cell.is_spanned)
        if line.strip(" |"):
            rows.append(line)
    return rows
