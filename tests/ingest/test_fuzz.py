"""A bounded-time fuzz pass over the parsers: random and mutated PDFs, Word, Excel and PowerPoint files (their
zip bytes, or the XML inside them), Markdown, HTML and text in mixed encodings go through parse -> clean -> split. Each input must either come out as chunks or raise ParseError
(whose reason names the problem), and none may take long. The generator is seeded, so a failure prints what
reproduces it; every crash or hang found this way is kept as a regression case at the bottom of this file.

KBCHAT_FUZZ_SECONDS sets the time spent per format (default 6; half that for each Office format)."""

from __future__ import annotations

import io
import os
import random
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ingest.clean import clean_document
from ingest.parse import ParseError, parse_file
from ingest.split import split_document
from kbcore.config import LimitSettings

sys.path.insert(0, str(Path(__file__).parent))
from hostile import text_pdf  # noqa: E402  (beside this file)
from test_office import small_office, zip_of  # noqa: E402

SECONDS = float(os.environ.get("KBCHAT_FUZZ_SECONDS", "6"))
PER_INPUT_SECONDS = 3.0  # generous: a real hang is minutes, a normal input milliseconds
# Small limits so that limit checks are exercised too, and big inputs stay cheap.
LIMITS = LimitSettings(max_pages=50, max_chars=200_000, max_page_chars=50_000, max_heading_chars=200,
                       max_headings=500)

SENTENCES = ["第一条 为了规范政府采购行为，制定本法。", "供应商应当具备下列条件：", "（一）具有独立承担民事责任的能力；",
             "Section 2.3 applies.", "目 录", "第 3 页", "- 12 -", "表 1 | 金额 | 数量", "……", "1.2.3 细则"]
MARKUP = {
    "md": ["# ", "## ", "###### ", "```", "~~~", "#", " #", "\t", "\n", "|", "* ", "1. ", "> ", "[", "](", "![",
           "\\", "\r", "\r\n", "\x00", "\ufeff", "..........", "。。。", "…………"],
    "html": ["<", ">", "</", "<!--", "-->", "<![CDATA[", "]]>", "<?", "<!", "<p>", "</p>", "<h1>", "</h1>", "<h7>",
             "<title>", "</title>", "<script>", "</script>", "<style>", "<td>", "<tr>", "<table>", '"', "'", "=",
             "&amp;", "&#", "&#x", "&#99999999;", "&nbsp", "<br/>", "<a href='>'>", "\x00"],
    "txt": ["\n", "\r", "\r\n", "\x00", "\ufeff", "\u3000", "\u00ad", "\ufb01", "。", "．", "......", " " * 50,
            "第一条", "第二章 总则", "\x0c", "\u2028"],
}
ENCODINGS = ["utf-8", "utf-8-sig", "gb18030", "gbk", "big5", "utf-16", "latin-1", "shift_jis"]


def _text_seed(rng: random.Random, kind: str) -> str:
    lines = []
    for _ in range(rng.randint(1, 30)):
        piece = rng.choice(SENTENCES)
        if kind == "md" and rng.random() < 0.2:
            piece = "#" * rng.randint(1, 7) + " " + piece
        if kind == "html":
            tag = rng.choice(["p", "h1", "h2", "td", "li", "div", "title", "script"])
            piece = f"<{tag}>{piece}</{tag}>"
        lines.append(piece)
    return "\n".join(lines)


def _mutate_text(rng: random.Random, text: str, kind: str) -> str:
    for _ in range(rng.randint(1, 12)):
        at = rng.randint(0, len(text))
        op = rng.random()
        if op < 0.45:
            text = text[:at] + rng.choice(MARKUP[kind]) * rng.choice([1, 1, 2, 50, 2_000]) + text[at:]
        elif op < 0.65:
            text = text[:at] + text[at + rng.randint(1, 40):]
        elif op < 0.85:
            span = text[at:at + rng.randint(1, 200)]
            text = text[:at] + span * rng.randint(2, 200) + text[at:]
        else:
            text = text[:at] + "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(1, 8))
                                       if True) + text[at:]
    return text


def _encode(rng: random.Random, text: str) -> bytes:
    """One encoding, or pieces in several (a file pasted together from sources that disagree)."""
    pieces = [text] if rng.random() < 0.5 else [text[i:i + 50] for i in range(0, len(text), 50)]
    return b"".join(p.encode(rng.choice(ENCODINGS), errors="replace") for p in pieces)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        at = rng.randrange(max(1, len(data)))
        op = rng.random()
        if op < 0.4:
            data[at:at + 1] = bytes([rng.randrange(256)])
        elif op < 0.55:
            del data[at:at + rng.randint(1, 64)]
        elif op < 0.7:
            data[at:at] = rng.choice([b"obj", b"endobj", b"stream", b"endstream", b" 0 R", b"<<", b">>", b"[",
                                      b"/Length 999999", b"/Kids [1 0 R]", b"/Outlines 1 0 R", b"%%EOF", b"xref",
                                      b"(", b")", b"\\", b"9" * 30, b"-1", b"/Count -5"])
        elif op < 0.85:
            span = bytes(data[at:at + rng.randint(1, 100)])
            data[at:at] = span * rng.randint(2, 20)
        else:
            del data[rng.randrange(max(1, len(data))):]  # truncated
    return bytes(data)


def _pdf_seeds(folder: Path) -> list[bytes]:
    import pymupdf

    plain = text_pdf(folder / "seed1.pdf", ["第一章 总则", "第一条 为了规范政府采购行为。", "第二章 附则"],
                     toc=[[1, "第一章 总则", 1], [2, "第一条", 2], [1, "第二章 附则", 3]]).read_bytes()
    doc = pymupdf.open()
    page = doc.new_page()
    for i in range(4):  # a ruled table, so the table finder runs too
        page.draw_line((72, 100 + 20 * i), (400, 100 + 20 * i))
    for x in (72, 200, 400):
        page.draw_line((x, 100), (x, 160))
    page.insert_text((80, 115), "甲 乙", fontname="china-s")
    doc.set_metadata({"title": "表格"})
    doc.save(folder / "seed2.pdf", deflate=False)
    return [plain, (folder / "seed2.pdf").read_bytes()]


def _mutate_office(rng: random.Random, data: bytes) -> bytes:
    """The zip's bytes mutated (container checks), or one XML part's text mutated and zipped again (the XML
    readers behind them)."""
    if rng.random() < 0.4:
        return _mutate_bytes(rng, data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {m: archive.read(m) for m in archive.namelist()}
    name = rng.choice(sorted(m for m in members if m.endswith(".xml")))
    members[name] = _mutate_text(rng, members[name].decode("utf-8"), "html").encode("utf-8", "surrogatepass")
    return zip_of(members)


def _check(path: Path) -> str:
    """'ok' or 'refused'; any other exception, or a slow input, fails the test."""
    started = time.perf_counter()
    try:
        parsed = parse_file(path, LIMITS)
        split_document(clean_document(parsed), 300, 50)
        outcome = "ok"
    except ParseError as exc:
        assert str(exc).startswith(path.name + ": ") and exc.reason
        outcome = "refused"
    seconds = time.perf_counter() - started
    assert seconds < PER_INPUT_SECONDS, f"{path.name} took {seconds:.1f} s"
    return outcome


@pytest.mark.parametrize("kind", ["pdf", "md", "html", "txt", "docx", "xlsx", "pptx"])
def test_fuzz_parsers(kind, tmp_path):
    rng = random.Random(f"kbchat-fuzz-{kind}")
    office = kind in ("docx", "xlsx", "pptx")
    seeds = _pdf_seeds(tmp_path) if kind == "pdf" else [small_office(kind)] if office else []
    path = tmp_path / f"input.{kind}"
    tried, outcomes = 0, {"ok": 0, "refused": 0}
    deadline = time.perf_counter() + (SECONDS / 2 if office else SECONDS)
    while time.perf_counter() < deadline:
        if kind == "pdf":
            data = _mutate_bytes(rng, rng.choice(seeds)) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 4000))
        elif office:
            data = _mutate_office(rng, seeds[0])
        else:
            text = _mutate_text(rng, _text_seed(rng, kind), kind)
            data = _encode(rng, text)
            if rng.random() < 0.3:
                data = _mutate_bytes(rng, data)
        path.write_bytes(data)
        try:
            outcomes[_check(path)] += 1
        except BaseException:
            (tmp_path / f"crash-{tried}.{kind}").write_bytes(data)
            print(f"input {tried} of the {kind} pass is kept in {tmp_path / f'crash-{tried}.{kind}'}")
            raise
        tried += 1
    print(f"fuzz {kind}: {tried} inputs, {outcomes}")
    (Path(os.environ.get("KBCHAT_FUZZ_COUNTS", tmp_path)) / f"fuzz-{kind}.count").write_text(str(tried))
    assert tried >= 20 and outcomes["ok"] > 0


# ------------------------------------------------------------------ crashes found by the pass, kept
def _page_tree_cycle(folder: Path) -> bytes:
    """The pass's first PDF crash: the page tree lists itself among its kids, and loading page 4 raised
    FzErrorFormat ("cycle in page tree") outside the per-page error handling, failing the whole ingest run."""
    import pymupdf

    doc = pymupdf.open(text_pdf(folder / "three.pdf", ["一", "二", "三"]))
    tree = int(doc.xref_get_key(doc.pdf_catalog(), "Pages")[1].split()[0])
    doc.xref_set_key(tree, "Kids", doc.xref_get_key(tree, "Kids")[1][:-1] + f" {tree} 0 R]")
    doc.xref_set_key(tree, "Count", "4")
    return doc.tobytes()


@pytest.mark.parametrize("name, make, outcome", [
    ("cdata.html", lambda _: b"<p>\xe6\xad\xa3\xe6\x96\x87</p>" + b"<![" * 3, "ok"),  # html.parser: AssertionError
    ("cycle.pdf", _page_tree_cycle, "page 4 cannot be read (code=7: cycle in page tree)"),
])
def test_fuzz_regressions(tmp_path, name, make, outcome):
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    if outcome == "ok":
        assert _check(path) == "ok"
    else:
        with pytest.raises(ParseError, match=outcome.replace("(", r"\(").replace(")", r"\)")):
            parse_file(path)
