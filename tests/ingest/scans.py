"""Scanned copies of real pages for the OCR tests and bench/bench_ocr.py: ../shared/eval has no scans, so its PDF
pages are rendered to greyscale images, as a scanner would deliver them, and put into files without a text
layer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

SCAN_DPI = 200  # what office scanners deliver by default


def page_image(pdf: Path, number: int, dpi: int = SCAN_DPI, clip: tuple[float, float] | None = None):
    """Page ``number`` (1-based) of ``pdf`` as a greyscale pymupdf Pixmap; ``clip`` = (top, bottom) as shares
    of the page's height keeps only that band."""
    import pymupdf

    with pymupdf.open(pdf) as doc:
        page = doc[number - 1]
        rect = page.rect
        if clip:
            rect = pymupdf.Rect(0, rect.height * clip[0], rect.width, rect.height * clip[1])
        return page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, clip=rect)


def scanned_pdf(src: Path, dst: Path, pages: Sequence[int] | None = None, dpi: int = SCAN_DPI) -> Path:
    """A copy of ``src`` whose pages (all, or the 1-based ``pages``) are images of themselves, with no text
    layer; the other pages keep theirs, and every page keeps its number."""
    import pymupdf

    with pymupdf.open(src) as doc, pymupdf.open() as out:
        for number in range(1, doc.page_count + 1):
            page = doc[number - 1]
            if pages is not None and number not in pages:
                out.insert_pdf(doc, from_page=number - 1, to_page=number - 1)
                continue
            pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
            new = out.new_page(width=page.rect.width, height=page.rect.height)
            new.insert_image(new.rect, stream=pix.tobytes("png"))
        out.save(dst, deflate=True)
    return dst
