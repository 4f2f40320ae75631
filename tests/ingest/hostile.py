"""Hostile inputs for the ingest tests: small files that used to cost minutes, GBs or a hung ingest."""

from __future__ import annotations

from pathlib import Path


def shared_stream_pdf(path: Path, pages: int = 20, chars: int = 1_000_000) -> Path:
    """A PDF of a few KB whose pages all draw one content stream holding ``chars`` characters, written
    over one another: every page extracts to the full million characters."""
    import pymupdf

    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page()
    doc[0].insert_text((72, 72), "x", fontname="helv")  # gives page 1 a font resource to share
    font = doc[0].get_fonts()[0][4]
    line = b"(" + b"A" * 100 + b") Tj T* "
    body = b"BT /" + font.encode() + b" 1 Tf 0 TL 10 400 Td " + line * (chars // 100) + b"ET"
    xref = doc[0].get_contents()[0]
    doc.update_stream(xref, body)
    resources = doc.xref_get_key(doc[0].xref, "Resources")[1]
    for page in doc:
        doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
        doc.xref_set_key(page.xref, "Resources", resources)
    doc.save(path, garbage=3, deflate=True)
    return path


def text_pdf(path: Path, pages: list[str], toc: list[list] | None = None) -> Path:
    """A plain PDF with one short text line per page (and an outline when given)."""
    import pymupdf

    doc = pymupdf.open()
    for text in pages:
        doc.new_page().insert_text((72, 72), text, fontname="china-s")
    if toc:
        doc.set_toc(toc)
    doc.save(path)
    return path
