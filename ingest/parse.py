"""Turn a file into text with page numbers and headings: PDF, plain text, Markdown, HTML, Word, Excel
and PowerPoint files (``ingest.office``: a slide is a page, a workbook row is a page numbered by its sheet),
and through OCR (``ingest.ocr``, when a ``PageReader`` is given) scanned PDF pages, scanned regions of other
PDF pages, and image files.

A PDF gives one ``Page`` per page (1-based numbers) and its outline (bookmarks) as headings. Tables found on
a page are written out as rows of cells joined by `` | `` in reading order, so they are not scrambled.
Anything that cannot give text raises ``ParseError`` naming the file and the reason: "it opened" is not
enough, so the checks cover empty files, non-PDF bytes behind a ``.pdf`` name, zero pages, passwords and
scans without a text layer.

Parsing is linear in the file's size (no backtracking regular expression sees document text, HTML is read by
a small tokenizer of our own), and ``LimitSettings`` bounds what one file may hold: bytes, pages, characters
per page and in all, headings and their length. A file over a limit raises ``ParseError`` naming the limit.

>>> import tempfile, pathlib
>>> md = pathlib.Path(tempfile.mkdtemp()) / "note.md"
>>> _ = md.write_text("# 检索\\n正文。\\n## 细节\\n更多。", encoding="utf-8")
>>> doc = parse_file(md)
>>> doc.title, [(h.level, h.title) for h in doc.headings]
('检索', [(1, '检索'), (2, '细节')])
>>> doc.pages[0].text.splitlines()[0]
'检索'
"""

from __future__ import annotations

import html
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kbcore.config import LimitSettings
from kbcore.text import CJK_TEXT

if TYPE_CHECKING:
    from ingest.ocr import PageReader

DocumentKind = Literal["pdf", "txt", "md", "html", "docx", "xlsx", "pptx", "image"]

SUPPORTED_SUFFIXES: dict[str, DocumentKind] = {
    ".pdf": "pdf", ".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
    ".docx": "docx", ".xlsx": "xlsx", ".pptx": "pptx",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image",
}
# Old binary Office formats are not read, but they are taken up so that each fails saying how to convert it
# rather than being skipped in silence.
LEGACY_OFFICE_SUFFIXES = (".doc", ".xls", ".ppt")

# Separates the cells of a table row in the extracted text; the cleaner never joins such lines.
TABLE_CELL_SEPARATOR = " | "


class ParseError(Exception):
    """A file that cannot be turned into text. ``reason`` is written for the person who owns the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


class UnsupportedFileError(ParseError):
    """A file type this parser does not read (skipped, not failed, when walking a folder)."""


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    text: str


@dataclass(frozen=True)
class Heading:
    level: int  # 1 = top
    title: str
    page: int  # 1-based page where the heading is printed


@dataclass(frozen=True)
class ParsedDocument:
    path: Path
    kind: DocumentKind
    title: str
    pages: list[Page]
    headings: list[Heading] = field(default_factory=list)
    tables: int = 0  # how many tables were written out as rows
    ocr_pages: int = 0  # pages whose text came from OCR, wholly or in scanned regions

    @property
    def page_count(self) -> int:
        return len(self.pages)


def is_supported(path: str | os.PathLike) -> bool:
    """Whether ingest takes the file up: a kind it reads, or an old Office file that fails with how to convert it.

    >>> is_supported("报告.DOCX"), is_supported("旧表.xls"), is_supported("扫描.TIF"), is_supported("图.gif")
    (True, True, True, False)
    """
    suffix = Path(path).suffix.lower()
    return suffix in SUPPORTED_SUFFIXES or suffix in LEGACY_OFFICE_SUFFIXES


def parse_file(path: str | os.PathLike, limits: LimitSettings | None = None,
               ocr: "PageReader | None" = None) -> ParsedDocument:
    """Parse one file by its extension; raises ``ParseError`` (or ``UnsupportedFileError``) with the reason.
    Only a regular file is read: a link, FIFO or device is refused before it is opened. Without ``ocr``
    nothing is OCR'd: a scanned PDF and an image file fail saying they need it."""
    path = Path(path)
    limits = limits or LimitSettings()
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None and path.suffix.lower() not in LEGACY_OFFICE_SUFFIXES:
        raise UnsupportedFileError(path, f"unsupported file type {path.suffix or '(no extension)'!r}; "
                                         f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    size = check_regular_file(path)
    if size == 0:
        raise ParseError(path, "empty file (0 bytes)")
    if size > limits.max_file_mb * 2**20:
        raise ParseError(path, f"file is {size / 2**20:.0f} MB, over the limit of {limits.max_file_mb} MB "
                               f"(setting limits.max_file_mb)")
    if kind is None:  # an old binary Office file: the other unknown kinds were refused above
        from ingest.office import legacy_reason  # ingest.office imports this module

        raise ParseError(path, legacy_reason(path.suffix.lower()))
    if kind in ("docx", "xlsx", "pptx"):
        from ingest.office import parse_office

        parsed = parse_office(path, kind, limits)
    elif kind == "pdf":
        parsed = _parse_pdf(path, limits, ocr)
    elif kind == "image":
        parsed = _parse_image(path, limits, ocr)
    else:
        # UTF-8 and GB18030 spend at most 4 bytes a character, so a bigger file holds too many characters.
        if size > 4 * limits.max_chars:
            raise ParseError(path, f"file of {size / 2**20:.0f} MB holds more than {limits.max_chars:,} characters, "
                                   f"the limit (setting limits.max_chars)")
        text = _read_text(path)
        if kind == "md":
            parsed = _parse_markdown(path, text)
        elif kind == "html":
            parsed = _parse_html(path, text)
        else:
            parsed = _parse_plain(path, text)
        _check_chars(path, limits, len(parsed.pages[0].text))
    _check_headings(parsed, limits)
    return parsed


def check_regular_file(path: Path) -> int:
    """The size of ``path`` when it is a regular file (not followed if a link); else ``ParseError``. A FIFO or
    a device would block or never end, and a link could reach any file outside the folder being ingested."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ParseError(path, f"cannot read the file: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ParseError(path, "a symbolic link: links are not followed, only regular files are ingested "
                               "(copy the file into the folder instead)")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else \
            "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else \
            "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        raise ParseError(path, f"{kind}: only regular files are ingested")
    return info.st_size


def _check_chars(path: Path, limits: LimitSettings, count: int, page: int | None = None) -> None:
    if page is not None and count > limits.max_page_chars:
        raise ParseError(path, f"page {page} holds {count:,} characters, over the limit of "
                               f"{limits.max_page_chars:,} a page (setting limits.max_page_chars)")
    if page is None and count > limits.max_chars:
        raise ParseError(path, f"{count:,} characters of text, over the limit of {limits.max_chars:,} "
                               f"(setting limits.max_chars)")


def _check_headings(doc: ParsedDocument, limits: LimitSettings) -> None:
    """A heading is repeated in every chunk below it, and each one is looked up in the text when splitting."""
    if len(doc.headings) > limits.max_headings:
        raise ParseError(doc.path, f"{len(doc.headings):,} headings, over the limit of {limits.max_headings:,} "
                                   f"(setting limits.max_headings)")
    for heading in doc.headings:
        if len(heading.title) > limits.max_heading_chars:
            raise ParseError(doc.path, f"a heading of {len(heading.title):,} characters on page {heading.page} "
                                       f"({_preview(heading.title)}), over the limit of {limits.max_heading_chars} "
                                       f"(setting limits.max_heading_chars)")
    if len(doc.title) > limits.max_heading_chars:
        raise ParseError(doc.path, f"a title of {len(doc.title):,} characters ({_preview(doc.title)}), over the "
                                   f"limit of {limits.max_heading_chars} (setting limits.max_heading_chars)")


def _preview(text: str) -> str:
    return '"' + " ".join(text[:200].split())[:30] + '…"'


# ---------------------------------------------------------------------------------------------- PDF
_MAGIC_NAMES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                b"PK\x03\x04": "a ZIP archive (e.g. .docx)", b"\xd0\xcf\x11\xe0": "an old Office document",
                b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image"}

# Metadata titles that say nothing about the document.
_USELESS_TITLE = re.compile(r"^(untitled|无标题|microsoft word\b.*|document\d*|\s*)$", re.IGNORECASE)


def _describe_bytes(head: bytes) -> str:
    for magic, name in _MAGIC_NAMES.items():
        if head.startswith(magic):
            return name
    return "not a PDF"


def _parse_pdf(path: Path, limits: LimitSettings, ocr: "PageReader | None" = None) -> ParsedDocument:
    import pymupdf

    if hasattr(pymupdf, "no_recommend_layout"):
        pymupdf.no_recommend_layout()  # find_tables would print an advert on stdout, into --json output

    with open(path, "rb") as fh:
        head = fh.read(1024)
    if b"%PDF-" not in head:
        raise ParseError(path, f"not a PDF file: the content is {_describe_bytes(head)}")
    try:
        pdf = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # pymupdf raises several types (FileDataError, EmptyFileError, RuntimeError)
        raise ParseError(path, f"damaged PDF that cannot be opened ({exc})") from None
    with pdf:
        if not pdf.is_pdf:
            raise ParseError(path, f"not a PDF file: the content is {_describe_bytes(head)}")
        if pdf.needs_pass or pdf.is_encrypted:
            raise ParseError(path, "encrypted PDF: it needs a password; save an unencrypted copy to ingest it")
        try:  # a damaged page tree can make even the count fail ("Invalid number of pages", found by the fuzz pass)
            page_count = pdf.page_count
        except Exception as exc:
            raise ParseError(path, f"damaged PDF: its pages cannot be counted ({exc})") from None
        if page_count == 0:
            raise ParseError(path, "truncated or damaged PDF: no pages could be read")
        if page_count > limits.max_pages:
            raise ParseError(path, f"{page_count:,} pages, over the limit of {limits.max_pages:,} "
                                   f"(setting limits.max_pages)")
        pages: list[Page] = []
        tables = chars = 0
        for number in range(1, page_count + 1):
            try:  # loading a page can fail too (a cycle in the page tree)
                text, found = _page_text(pdf.load_page(number - 1))
            except Exception as exc:
                raise ParseError(path, f"damaged PDF: page {number} cannot be read ({exc})") from None
            # Counted as pages come, so a file whose pages share one huge content stream stops early.
            chars += len(text)
            _check_chars(path, limits, len(text), number)
            _check_chars(path, limits, chars)
            tables += found
            pages.append(Page(number, text))
        scanned = _ocr_pdf_pages(path, pdf, pages, limits, ocr) if ocr is not None else 0
        try:
            if not any(p.text.strip() for p in pages):
                has_images = any(page.get_images() for page in pdf)
                raise ParseError(path, f"no text: it has no text layer, and OCR found no text on its {scanned} "
                                       f"scanned page(s)" if scanned else
                                       "no text layer: the pages are scanned images only, and OCR is off (turn "
                                       "on setting ingest.ocr, or leave out --no-ocr)" if has_images else
                                       "no text could be extracted from any page")
            headings = [Heading(level, title.strip(), page) for level, title, page in pdf.get_toc(simple=True)
                        if title.strip() and 1 <= page <= pdf.page_count]
            meta_title = (pdf.metadata or {}).get("title") or ""
        except ParseError:
            raise
        except Exception as exc:  # a damaged outline or metadata object
            raise ParseError(path, f"damaged PDF: its outline or metadata cannot be read ({exc})") from None
    # Metadata is invisible to the reader: a long one is cut rather than refusing the file.
    meta_title = meta_title.strip()[:limits.max_heading_chars]
    title = meta_title if not _USELESS_TITLE.match(meta_title) else ""
    title = title or (headings[0].title if headings else "") or _first_line(pages) or path.stem
    return ParsedDocument(path, "pdf", title, pages, headings, tables, scanned)


def _ocr_pdf_pages(path: Path, pdf, pages: list[Page], limits: LimitSettings, ocr: "PageReader") -> int:
    """Replace the text of scanned pages (``ocr.needs_ocr``) by what OCR reads on them, and add to other pages
    what it reads in their scanned regions (``ocr.scanned_regions``); how many pages used OCR."""
    from ingest.ocr import OcrError, needs_ocr, ocr_pdf_page, ocr_pdf_regions, scanned_regions

    todo: dict[int, list | None] = {}  # page index: its regions, or None for the whole page
    try:
        for i, page in enumerate(pages):
            pdf_page = pdf.load_page(i)
            if needs_ocr(pdf_page, page.text):
                todo[i] = None
            elif regions := scanned_regions(pdf_page):
                todo[i] = regions
    except Exception as exc:  # damaged image objects
        raise ParseError(path, f"damaged PDF: its images cannot be listed ({exc})") from None
    ocr.on_ocr(sum(1 if regions is None else len(regions) for regions in todo.values()), 0)
    chars = sum(len(p.text) for p in pages)
    for i, regions in todo.items():
        try:
            page = pdf.load_page(i)
            text = ocr_pdf_page(page, ocr) if regions is None else ocr_pdf_regions(page, pages[i].text, regions, ocr)
        except OcrError as exc:
            raise ParseError(path, f"page {i + 1}: {exc}") from None
        except Exception as exc:  # rendering a damaged page, or the OCR engine failing on it
            raise ParseError(path, f"page {i + 1} cannot be OCR'd ({type(exc).__name__}: {exc})") from None
        chars += len(text) - len(pages[i].text)
        _check_chars(path, limits, len(text), i + 1)
        _check_chars(path, limits, chars)
        pages[i] = Page(pages[i].number, text)
    return len(todo)


def _parse_image(path: Path, limits: LimitSettings, ocr: "PageReader | None") -> ParsedDocument:
    """An image file through OCR: one page per image (a multi-page TIFF has several)."""
    from ingest.ocr import LOW_CONFIDENCE_MARK, ImageFile, OcrError

    if ocr is None:
        raise ParseError(path, "an image: reading it needs OCR, which is off (turn on setting ingest.ocr, or "
                               "leave out --no-ocr)")
    pages: list[Page] = []
    chars = 0
    try:
        with ImageFile(path, limits) as image:
            ocr.on_ocr(len(image), 0)
            for number, bgr in enumerate(image, start=1):
                text = ocr.text(bgr)
                chars += len(text)
                _check_chars(path, limits, len(text), number)
                _check_chars(path, limits, chars)
                pages.append(Page(number, text))
    except OcrError as exc:
        raise ParseError(path, str(exc)) from None
    if not any(p.text.strip() for p in pages):
        raise ParseError(path, f"no text: OCR found none in the image{'s' if len(pages) > 1 else ''} (a photo or "
                               f"drawing without writing, or a blank scan)")
    first = _first_line(pages)
    title = first if first and LOW_CONFIDENCE_MARK not in first else path.stem
    return ParsedDocument(path, "image", title, pages, ocr_pages=len(pages))


_PAGE_NUMBER_LINE = re.compile(r"^[-–—\s\divxlc]*$", re.IGNORECASE)
_CONTENTS_TITLE = re.compile(r"^(目\s*录|contents|table of contents)$", re.IGNORECASE)


# A first line this long, or holding a sentence's end, is the text itself, not its title: as the title it would
# be prepended to every chunk (kbcore.text.passage_text), doubling what a one-paragraph file embeds.
_TITLE_CHARS = 60
_SENTENCE_END = re.compile(r"[。！？；]|[.!?;](?:\s|$)")


def _first_line(pages: list[Page]) -> str:
    r"""The first line that is not a page number, if it reads as a title; "" when the document opens with its
    contents or with a sentence.

    >>> _first_line([Page(1, "关于促进政府采购公平竞争优化营商环境的通知\n一、……")])
    '关于促进政府采购公平竞争优化营商环境的通知'
    >>> _first_line([Page(1, "汽车跟随着。示例1：如果你被给了一辆汽车，那辆车没有保险……")])
    ''
    """
    for page in pages:
        for line in page.text.splitlines():
            if not _PAGE_NUMBER_LINE.match(line):
                line = line.strip()
                if _CONTENTS_TITLE.match(line) or len(line) > _TITLE_CHARS or _SENTENCE_END.search(line):
                    return ""
                return line
    return ""


def _page_text(page) -> tuple[str, int]:
    """The page's text in reading order, with tables as rows; (text, tables found)."""
    if not _may_hold_table(page):
        return page.get_text(), 0
    tables = [t for t in page.find_tables().tables if t.row_count >= 2 and t.col_count >= 2]
    if not tables:
        return page.get_text(), 0
    import pymupdf

    boxes = [pymupdf.Rect(t.bbox) for t in tables]
    pieces: list[tuple[float, float, str]] = []
    for x0, y0, x1, y1, text, _no, kind in page.get_text("blocks"):
        if kind != 0:
            continue
        centre = pymupdf.Point((x0 + x1) / 2, (y0 + y1) / 2)
        if any(centre in box for box in boxes):
            continue  # this text is written out with its table
        pieces.append((y0, x0, text if text.endswith("\n") else text + "\n"))
    for table, box in zip(tables, boxes):
        rows = [TABLE_CELL_SEPARATOR.join(_cell_text(c) for c in row) for row in table.extract()]
        pieces.append((box.y0, box.x0, "".join(r + "\n" for r in rows if r.strip(" |"))))
    pieces.sort(key=lambda p: (round(p[0], 1), p[1]))
    return "".join(text for _y, _x, text in pieces), len(tables)


_CJK_CHAR = re.compile(f"[{CJK_TEXT}]")


def _cell_text(cell: str | None) -> str:
    """A cell's wrapped lines joined: no space between Chinese characters, a space between words."""
    if not cell:
        return ""
    out = ""
    for line in cell.split("\n"):
        line = line.strip()
        if out and line and not (_CJK_CHAR.match(out[-1]) or _CJK_CHAR.match(line[0])):
            out += " "
        out += line
    return out


def _may_hold_table(page) -> bool:
    """Cheap test before pymupdf's table finder, which is slow on every page (bench/bench_ingest.py's parse
    stage): a ruled table has a vertical rule with cells on both sides, i.e. horizontal rules reaching past it
    to the left and to the right.
    The frame of a code box has rules on one side only, so it does not count."""
    horizontal: list[tuple[float, float, float]] = []  # (y, x_min, x_max)
    vertical: list[tuple[float, float, float]] = []  # (x, y_min, y_max)

    def add_segment(ax, ay, bx, by):
        if abs(ay - by) < 1 and abs(ax - bx) > 3:
            horizontal.append((ay, min(ax, bx), max(ax, bx)))
        elif abs(ax - bx) < 1 and abs(ay - by) > 3:
            vertical.append((ax, min(ay, by), max(ay, by)))

    for path in page.get_cdrawings():
        for item in path["items"]:
            if item[0] == "l":
                add_segment(item[1][0], item[1][1], item[2][0], item[2][1])
            elif item[0] == "re":
                x0, y0, x1, y1 = item[1]
                if min(abs(x1 - x0), abs(y1 - y0)) < 2:  # a rule drawn as a thin rectangle
                    add_segment(x0, (y0 + y1) / 2, x1, (y0 + y1) / 2) if abs(y1 - y0) < 2 else \
                        add_segment((x0 + x1) / 2, y0, (x0 + x1) / 2, y1)
    if len(vertical) < 2 or len(horizontal) < 3:
        return False
    for x, y_min, y_max in vertical:
        near = [(hx0, hx1) for hy, hx0, hx1 in horizontal if y_min - 2 <= hy <= y_max + 2]
        if any(hx0 < x - 3 for hx0, _ in near) and any(hx1 > x + 3 for _, hx1 in near):
            return True
    return False


# ---------------------------------------------------------------------------------------------- text formats
def _read_text(path: Path) -> str:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ParseError(path, "not a text file: neither UTF-8 nor GB18030")
    if "\x00" in text:
        raise ParseError(path, "not a text file: it contains binary data")
    if not text.strip():
        raise ParseError(path, "no text: the file holds only whitespace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse_plain(path: Path, text: str) -> ParsedDocument:
    pages = [Page(1, text)]
    return ParsedDocument(path, "txt", _first_line(pages) or path.stem, pages)


_MD_FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_heading(line: str) -> tuple[int, str] | None:
    """(level, title) of an ATX heading line (``## Title ##``), else None. Plain string steps, linear in the
    line: the regular expression this replaces backtracked cubically on ``# a`` + spaces + ``b``
    (bench/bench_hostile.py).

    >>> markdown_heading("## 细则 ##"), markdown_heading("# C#"), markdown_heading("#标签"), markdown_heading("####### x")
    ((2, '细则'), (1, 'C#'), None, None)
    """
    level = len(line) - len(line.lstrip("#"))
    rest = line[level:]
    if not 1 <= level <= 6 or not rest[:1].isspace():
        return None
    title = rest.strip()
    closed = title.rstrip("#")
    if closed != title and (not closed or closed[-1].isspace()):  # a closing run of # after a space
        title = closed.rstrip() or title
    return (level, title) if title else None


def _parse_markdown(path: Path, text: str) -> ParsedDocument:
    """Headings come from ``#`` lines (not inside fenced code); the ``#`` marks are dropped from the text."""
    lines, headings, in_fence = [], [], False
    for line in text.split("\n"):
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else markdown_heading(line)
        if heading:
            headings.append(Heading(heading[0], heading[1], 1))
            lines.append(heading[1])
        else:
            lines.append(line)
    pages = [Page(1, "\n".join(lines))]
    title = headings[0].title if headings else (_first_line(pages) or path.stem)
    return ParsedDocument(path, "md", title, pages, headings)


# What the HTML tokenizer looks for at a "<". Each search starts where the last one ended and a construct left
# open (a comment, a tag, a script) runs to the end of the file, as in browsers, so the whole file is read once:
# html.parser was quadratic on unclosed comments and raised AssertionError on "<![" repeated
# (bench/bench_hostile.py, tests/ingest/test_bounded.py).
_TAG = re.compile(r"<(/?)([A-Za-z][^\t\n\r\f />\x00]*)")
_TAG_END = re.compile(r"""(?:[^>"']++|"[^"]*+"|'[^']*+')*+>""")  # attributes, quoted ">" included
_RAW_TEXT_END = {name: re.compile(rf"</{name}\b", re.IGNORECASE) for name in ("script", "style", "noscript",
                                                                              "template", "textarea", "title")}


def _html_events(text: str):
    """("start" | "end", tag name) and ("data", text with character references decoded), in document order."""
    i, n = 0, len(text)
    while i < n:
        lt = text.find("<", i)
        if lt < 0:
            lt = n
        if lt > i:
            yield "data", html.unescape(text[i:lt])
        if lt >= n:
            return
        if text.startswith("<!--", lt):
            end = text.find("-->", lt + 4)
            i = n if end < 0 else end + 3
            continue
        tag = _TAG.match(text, lt)
        if tag is None:
            if text.startswith(("<!", "<?"), lt):  # doctype, CDATA, processing instruction: skipped
                end = text.find(">", lt + 2)
                i = n if end < 0 else end + 1
            else:  # a "<" that opens nothing is text
                yield "data", "<"
                i = lt + 1
            continue
        close = _TAG_END.match(text, tag.end())
        if close is None:
            return  # a tag never closed: the rest of the file is inside it
        i = close.end()
        name = tag.group(2).lower()
        if tag.group(1):
            yield "end", name
            continue
        yield "start", name
        if name in _RAW_TEXT_END and not text[i - 2:i] == "/>":  # their content is not markup
            end = _RAW_TEXT_END[name].search(text, i)
            stop = n if end is None else end.start()
            yield "data", text[i:stop] if name != "title" else html.unescape(text[i:stop])
            i = stop


class _HTMLText:
    """Collects visible text, one block element per line, and h1-h6 headings."""

    _BLOCKS = {"p", "div", "br", "li", "tr", "table", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6",
               "pre", "blockquote", "ul", "ol", "dt", "dd", "header", "footer", "title"}
    _SKIP = {"script", "style", "noscript", "template"}

    def __init__(self):
        self.parts: list[str] = []
        self.headings: list[Heading] = []
        self.title = ""
        self._skip = 0
        self._heading: tuple[int, list[str]] | None = None
        self._in_title = False
        self._cells = 0

    def feed(self, text: str) -> None:
        for kind, value in _html_events(text):
            if kind == "data":
                self.handle_data(value)
            elif kind == "start":
                self.handle_starttag(value)
            else:
                self.handle_endtag(value)

    def handle_starttag(self, tag):
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n")
            self._heading = (int(tag[1]), [])
        elif tag in ("td", "th"):
            if self._cells:
                self.parts.append(TABLE_CELL_SEPARATOR)
            self._cells += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "tr":
            self._cells = 0

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif self._heading and tag == f"h{self._heading[0]}":
            title = " ".join("".join(self._heading[1]).split())
            if title:
                self.headings.append(Heading(self._heading[0], title, 1))
            self._heading = None
            self.parts.append("\n")
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._skip:
            return
        if self._in_title:
            self.title += data
            return
        if self._heading:
            self._heading[1].append(data)
        self.parts.append(data)


def _parse_html(path: Path, text: str) -> ParsedDocument:
    parser = _HTMLText()
    parser.feed(text)
    raw = "".join(parser.parts)
    # Collapse the whitespace HTML does not show, keep one line per block.
    lines = [" ".join(line.split()) for line in raw.split("\n")]
    body = "\n".join(line for line in lines if line)
    if not body.strip():
        raise ParseError(path, "no visible text in the HTML")
    pages = [Page(1, body)]
    title = " ".join(parser.title.split()) or (parser.headings[0].title if parser.headings else "") \
        or _first_line(pages) or path.stem
    return ParsedDocument(path, "html", title, pages, parser.headings)
