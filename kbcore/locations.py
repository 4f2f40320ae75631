"""Where a passage lies in its file, as the file's own program shows it: pages of a PDF or Word file, slides of a
deck, sheet and rows of a workbook. Ingest numbers a workbook's rows with ``sheet_row_page``; the app, the
command line and any other reader of citations label them with ``location_label``.

>>> sheet_row_page(2, 15), sheet_and_row(2_000_015)
(2000015, (2, 15))
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kbcore.text import HEADING_SEPARATOR

# A sheet's rows are numbered sheet * ROWS_PER_SHEET + row: page numbers of a workbook then ascend through
# its sheets, as the splitter needs, and a citation's pages still say which sheet and rows it quotes.
ROWS_PER_SHEET = 1_000_000


def sheet_row_page(sheet: int, row: int) -> int:
    """The page number of ``row`` (1-based, as Excel shows it) of the ``sheet``-th sheet (1-based)."""
    return sheet * ROWS_PER_SHEET + row


def sheet_and_row(page: int) -> tuple[int, int]:
    """(sheet, row) of a workbook page number made by ``sheet_row_page``."""
    return divmod(page, ROWS_PER_SHEET)


def pages_label(pages: Sequence[int]) -> str:
    """
    >>> pages_label([3]), pages_label([3, 4, 5]), pages_label([])
    ('p. 3', 'pp. 3–5', '')
    """
    if not pages:
        return ""
    return f"p. {pages[0]}" if len(pages) == 1 else f"pp. {pages[0]}–{pages[-1]}"


def location_label(source: str, pages: Sequence[int], heading: str = "") -> str:
    """Pages of a PDF or Word file, slides of a deck, the sheet (named by the last part of the chunk's
    ``heading`` path when given) and rows of a workbook.

    >>> location_label("课件.pptx", [3]), location_label("课件.pptx", [3, 4])
    ('slide 3', 'slides 3–4')
    >>> location_label("表.xlsx", [2_000_005, 2_000_006, 2_000_007], "表 > 销售")
    'sheet 销售 rows 5–7'
    >>> location_label("表.xlsx", [1_000_002]), location_label("报告.docx", [4, 5])
    ('sheet 1 row 2', 'pp. 4–5')
    """
    if not pages:
        return ""
    suffix = Path(source).suffix.lower()
    first, last = pages[0], pages[-1]
    if suffix == ".pptx":
        return f"slide {first}" if first == last else f"slides {first}–{last}"
    if suffix == ".xlsx":
        return _rows_label(first, last, heading)
    return pages_label(pages)


def _rows_label(first: int, last: int, heading: str) -> str:
    (sheet, row), (last_sheet, last_row) = sheet_and_row(first), sheet_and_row(last)
    if sheet != last_sheet:  # a passage widened across sheets: its rows mean nothing together
        return f"sheets {sheet}–{last_sheet}"
    name = heading.rsplit(HEADING_SEPARATOR, 1)[-1] if heading else str(sheet)
    return f"sheet {name} row {row}" if row == last_row else f"sheet {name} rows {row}–{last_row}"
