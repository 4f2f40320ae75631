"""Make extracted text fit for splitting and matching, without losing where each character came from.

What it does, in order:

1. normalises characters that hurt matching: full-width letters and digits become ASCII (``ＡＢＣ１`` ->
   ``ABC1``), no-break and ideographic spaces become plain spaces; Chinese punctuation (。，！？：；（）) stays;
2. drops repeated page headers and footers (the same line, digits aside, at the top or foot of most pages)
   and bare page numbers (``12``, ``- 12 -``, ``9 / 57``, ``第 3 页``);
3. joins lines that the PDF typesetter wrapped (``检\\n索`` -> ``检索``): a line as wide as the text column
   continues on the next one, unless that next line starts a heading, an article (第X条), a list item or a
   table row. Joins run across page breaks too, because a sentence does.

The result is one string for the whole document with one paragraph (or heading, list item, table row) per
line, plus the offset where each page starts, so any span maps back to exact pages.

>>> from ingest.parse import Page
>>> lines = "第一条 为了规范政府采购行为，提高政府采购资金的使用效益，维护国家利益和社会公共利益，"
>>> doc = clean_pages("t", [Page(1, lines + "\\n保护合法权益，制定本法。\\n第二条 本法适用于ＡＢＣ。\\n1\\n")])
>>> doc.text.splitlines()
['第一条 为了规范政府采购行为，提高政府采购资金的使用效益，维护国家利益和社会公共利益，保护合法权益，制定本法。', '第二条 本法适用于ABC。']
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from ingest.parse import TABLE_CELL_SEPARATOR, Heading, Page, ParsedDocument
from kbcore.text import CJK_TEXT, NUMERALS

# Full-width letters and digits to ASCII; no-break, ideographic and thin spaces to a space; soft hyphen out.
_CHAR_MAP = {**{c: c - 0xFEE0 for c in range(0xFF10, 0xFF1A)}, **{c: c - 0xFEE0 for c in range(0xFF21, 0xFF3B)},
             **{c: c - 0xFEE0 for c in range(0xFF41, 0xFF5B)},
             0x00A0: " ", 0x3000: " ", 0x2002: " ", 0x2003: " ", 0x2009: " ", 0x202F: " ", 0x00AD: None,
             0xFEFF: None, 0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl"}

_CJK = CJK_TEXT
_CJK_CHAR = re.compile(f"[{_CJK}\u201c\u201d\u2018\u2019\u2014\u2026\u00b7]")
_CJK_PUNCT = re.compile("[\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\u201c\u201d\u2018\u2019\u2014\u2026]")
_WIDE = re.compile(f"[{_CJK}]")

_PAGE_NUMBER = re.compile(
    r"^(?:[-–—·\s]*\d{1,4}[-–—·\s]*|\d{1,4}\s*/\s*\d{1,4}|[ivxlcdm]{1,7}|第\s*\d+\s*页(?:\s*[,，]?\s*共\s*\d+\s*页)?"
    r"|page\s+\d+(?:\s+of\s+\d+)?)$", re.IGNORECASE)
_NUMERALS = NUMERALS + "0-9"
# The dots that lead from a table-of-contents entry to its page number.
_DOT_LEADER = re.compile(r"(?:\s?[.·…]){5,}")
# Lines that start a unit of their own, so a wrapped line before them must not swallow them.
_UNIT_START = re.compile(
    rf"^(?:第[{_NUMERALS}]+[条章节编部分]|[（(][{_NUMERALS}]+[)）]|[{_NUMERALS[:-3]}]+、|\d+(?:\.\d+)*[.、)]?\s|"
    r"[•·●○■□◆▪\-–*]\s|\d+(?:\.\d+)+$|chapter\s+\d+|附件|附录)", re.IGNORECASE)
# How full a line must be, relative to the widest lines of the document, to count as wrapped.
WRAPPED_LINE_FILL = 0.8
# Below this width (12 Chinese characters) the "widest lines" are no text column and nothing is joined.
MIN_COLUMN_WIDTH = 24


@dataclass(frozen=True)
class CleanDocument:
    """The cleaned text of one document. ``page_starts[i]`` is the offset in ``text`` where page
    ``page_numbers[i]`` begins; a page with no text left starts where the next one does."""

    title: str
    text: str
    page_starts: list[int]
    page_numbers: list[int]
    headings: list[Heading] = field(default_factory=list)

    def page_at(self, offset: int) -> int:
        """The page holding the character at ``offset``."""
        i = bisect.bisect_right(self.page_starts, offset) - 1
        return self.page_numbers[max(i, 0)]

    def page_span(self, start: int, end: int) -> tuple[int, int]:
        """First and last page of the text in ``[start, end)``."""
        return self.page_at(start), self.page_at(max(start, end - 1))

    @property
    def page_count(self) -> int:
        return len(self.page_numbers)


def normalize_chars(text: str) -> str:
    """Full-width letters and digits to ASCII, odd spaces to plain ones; Chinese punctuation stays.

    >>> normalize_chars("ＡＢＣ１２３，检索。\\u3000end")
    'ABC123，检索。 end'
    """
    return text.translate(_CHAR_MAP)


def clean_document(parsed: ParsedDocument) -> CleanDocument:
    """Clean a parsed document; PDFs and OCR'd images get header/footer removal and line-wrap joining, text
    formats keep their lines (their authors wrote paragraphs, not typeset lines)."""
    return clean_pages(parsed.title, parsed.pages, parsed.headings, typeset=parsed.kind in ("pdf", "image"))


def clean_pages(title: str, pages: Sequence[Page], headings: Sequence[Heading] = (), *,
                typeset: bool = True) -> CleanDocument:
    page_lines = [[" ".join(_DOT_LEADER.sub(" ", line).split()) for line in normalize_chars(p.text).split("\n")]
                  for p in pages]
    if typeset:
        page_lines = _drop_headers_and_footers(page_lines)
    heading_starts = {_key(h.title) for h in headings if _key(h.title)}
    # PDF text has no meaningful blank lines (paragraphs are found from line widths); text formats do.
    lines = [(pages[i].number, line) for i, page in enumerate(page_lines) for line in page if line or not typeset]
    reference = _reference_width([line for _p, line in lines]) if typeset else 0

    out: list[str] = []
    length = 0
    page_starts: list[int] = []
    page_numbers = [p.number for p in pages]
    next_page = 0  # index into pages of the next page whose start is not yet recorded
    previous = ""  # the line before, when the current output line may still grow
    for number, line in lines:
        if not line:
            if out and out[-1] != "\n":
                out.append("\n")
                length += 1
            previous = ""
            continue
        joined = typeset and previous and _continues(previous, line, reference, heading_starts)
        if joined:
            glue = "" if _no_space_between(previous[-1], line[0]) else " "
        else:
            glue = "\n" if out and out[-1] != "\n" else ""
        out.append(glue)
        length += len(glue)
        while next_page < len(pages) and pages[next_page].number <= number:
            page_starts.append(length)
            next_page += 1
        out.append(line)
        length += len(line)
        previous = line
    while next_page < len(pages):
        page_starts.append(length)
        next_page += 1
    text = "".join(out).rstrip("\n")
    return CleanDocument(title, text, page_starts, page_numbers, list(headings))


def _key(text: str) -> str:
    """Heading lookup key: the first characters without whitespace."""
    return "".join(normalize_chars(text).split())[:8]


def _width(line: str) -> int:
    """Display width: Chinese characters are two columns wide, Latin ones about one."""
    return len(line) + len(_WIDE.findall(line))


def _reference_width(lines: list[str]) -> float:
    """The width of a full line of the text column: the 90th percentile of line widths."""
    widths = sorted(_width(line) for line in lines if line)
    return widths[int(0.9 * (len(widths) - 1))] if widths else 0


def _continues(previous: str, line: str, reference: float, heading_starts: set[str]) -> bool:
    if reference < MIN_COLUMN_WIDTH or _width(previous) < WRAPPED_LINE_FILL * reference:
        return False
    if previous[-1] in "。！？!?":  # a full line that ends a sentence may end its paragraph too: keep the break
        return False
    if TABLE_CELL_SEPARATOR in previous or TABLE_CELL_SEPARATOR in line:
        return False
    if _UNIT_START.match(line):
        return False
    return _key(line) not in heading_starts


def _no_space_between(left: str, right: str) -> bool:
    """Chinese needs no space at a join; Chinese next to Latin gets the space the typesetter dropped."""
    if left in "-/" or _CJK_PUNCT.match(left) or _CJK_PUNCT.match(right):
        return True
    return bool(_CJK_CHAR.match(left) and _CJK_CHAR.match(right))


def _drop_headers_and_footers(pages: list[list[str]]) -> list[list[str]]:
    """Remove bare page numbers and lines repeated at the top or foot of at least half the pages."""
    edge = 2  # how many non-empty lines at each end of a page count as header/footer candidates

    def edges(lines: list[str]) -> list[int]:
        filled = [i for i, line in enumerate(lines) if line]
        return sorted(set(filled[:edge] + filled[-edge:]))

    def shape(line: str) -> str:
        return re.sub(r"\d+", "#", line)

    counts: Counter[str] = Counter()
    for lines in pages:
        counts.update({shape(lines[i]) for i in edges(lines)})
    repeated = {s for s, n in counts.items() if len(pages) >= 3 and n >= max(3, len(pages) // 2)}
    cleaned = []
    for lines in pages:
        drop = {i for i in edges(lines) if shape(lines[i]) in repeated or _PAGE_NUMBER.match(lines[i])}
        cleaned.append([line for i, line in enumerate(lines) if i not in drop])
    return cleaned
