"""OCR of scanned PDF pages and image files, on scanned copies of real pages of ../shared/eval (tests/ingest/scans.py):
the gold phrases of the regulations QA set come back on their pages, text-layer pages are never OCR'd (but a
scan pasted into one is, in its place), a page's own text wins where it has some, columns are read one after the other, unsure lines are marked, and
bad images each fail with their reason. Only a few pages are OCR'd, most of them cut to a band of lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pymupdf
import pytest

import ingest.ocr as ocr
from ingest.clean import clean_document
from ingest.ocr import LOW_CONFIDENCE_MARK, PageReader, Segment, lines_text, reading_order
from ingest.parse import ParseError, parse_file
from ingest.split import split_document
from kbcore.config import LimitSettings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from scans import page_image, scanned_pdf  # noqa: E402  (beside this file)

LAW = "zhengfu-caigou-fa.pdf"


def squeeze(text: str) -> str:
    """The eval set's hit rule: no whitespace, NFKC; the low-confidence mark does not count either."""
    return unicodedata.normalize("NFKC", "".join(text.replace(LOW_CONFIDENCE_MARK, "").split()))


def gold(eval_dir, source: str) -> dict[str, list[int]]:
    """{gold phrase: its pages} of the regulations QA set for one document."""
    items = [json.loads(line) for line in (eval_dir / "qa" / "regulations.jsonl").open(encoding="utf-8")]
    return {a: item["pages"] for item in items if item["source"] == source for a in item["answers"]}


def phrase_pages(parsed, phrase: str) -> set[int]:
    """The pages of the cleaned document on which ``phrase`` lies (empty when it is not there)."""
    doc = clean_document(parsed)
    kept = [(i, ch) for i, ch in enumerate(doc.text) if not ch.isspace()]
    squeezed = unicodedata.normalize("NFKC", "".join(ch for _, ch in kept))
    at = squeezed.find(squeeze(phrase))
    if at < 0:
        return set()
    return set(doc.page_span(kept[at][0], kept[at + len(squeeze(phrase)) - 1][0] + 1))


def forbid_ocr(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the OCR engine was called")

    monkeypatch.setattr(ocr, "recognise", refuse)


# ---------------------------------------------------------------------------------------------- PDFs
def test_scanned_pages_of_a_law_give_back_its_gold_phrases_on_their_pages(eval_dir, tmp_path):
    """Pages 2 and 5 of the law become scans; the other six keep their text layer and are not OCR'd."""
    phrases = {a: p for a, p in gold(eval_dir, LAW).items() if set(p) <= {2, 5}}
    assert len(phrases) >= 2
    path = scanned_pdf(eval_dir / "docs" / LAW, tmp_path / LAW, pages=[2, 5])
    reader = PageReader()
    parsed = parse_file(path, ocr=reader)
    assert parsed.ocr_pages == 2 and reader.pages == 2
    for phrase, pages in phrases.items():
        assert phrase_pages(parsed, phrase) and phrase_pages(parsed, phrase) <= set(pages), phrase
    original = parse_file(eval_dir / "docs" / LAW)
    for number in (2, 5):  # close to the text layer, not just the phrases
        ours, theirs = squeeze(parsed.pages[number - 1].text), squeeze(original.pages[number - 1].text)
        assert abs(len(ours) - len(theirs)) < 0.03 * len(theirs)
    assert parsed.pages[0].text == original.pages[0].text


def test_without_ocr_a_scan_fails_saying_so(eval_dir, tmp_path):
    path = scanned_pdf(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", tmp_path / "扫描.pdf")
    with pytest.raises(ParseError, match="scanned images only, and OCR is off"):
        parse_file(path)


def test_no_page_of_the_text_layer_corpus_is_ocrd(eval_dir, monkeypatch):
    """Every page of the 18 real PDFs has a text layer: not one goes to OCR, with OCR on."""
    forbid_ocr(monkeypatch)
    reader = PageReader()
    for pdf in sorted((eval_dir / "docs").glob("*.pdf")):
        assert parse_file(pdf, ocr=reader).ocr_pages == 0, pdf.name
    assert reader.pages == 0


def test_a_pages_own_text_wins_over_ocr_where_it_has_some(eval_dir, tmp_path):
    """A scanned page with a few words of invisible text over its chapter heading (as a scanner's software may
    leave): the page is OCR'd, the heading's line is taken from the text layer and OCR's reading of it dropped."""
    original = pymupdf.open(eval_dir / "docs" / LAW)[1]
    lines = [line for block in original.get_text("dict")["blocks"] for line in block.get("lines", ())]
    heading = next(line for line in lines if "".join(s["text"] for s in line["spans"]).startswith("第二章"))
    span = heading["spans"][0]
    doc = pymupdf.open(scanned_pdf(eval_dir / "docs" / LAW, tmp_path / "scan.pdf", pages=[2]))
    words = "第二章 校对层的文字"  # as many characters as the heading it covers
    doc[1].insert_text(span["origin"], words, fontname="china-s", fontsize=span["size"], render_mode=3)
    doc.save(tmp_path / "mixed.pdf")
    parsed = parse_file(tmp_path / "mixed.pdf", ocr=PageReader())
    assert parsed.ocr_pages == 1
    text = squeeze(parsed.pages[1].text)
    assert "第二章政府采购当事人" not in text
    assert text.index("第十三条") < text.index(squeeze(words)) < text.index("第十四条")


def test_two_columns_are_read_one_after_the_other(eval_dir, tmp_path):
    """A page set in two columns of real articles under a full-width title: the left column comes whole
    before the right, and the title first."""
    cleaned = clean_document(parse_file(eval_dir / "docs" / LAW)).text.splitlines()
    articles = ["".join(line.split()) for line in cleaned if line.startswith(("第二十二条", "第二十三条", "第二十四条",
                                                                                "第二十五条", "第二十六条", "第二十七条"))]
    assert len(articles) == 6
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((200, 60), "政府采购法摘录", fontname="china-s", fontsize=16)
    # A 30 pt gutter: across 20 pt, detection joined lines of the two columns that sit on the same row.
    assert page.insert_textbox((40, 90, 285, 780), "\n".join(articles[:3]), fontname="china-s", fontsize=10) >= 0
    assert page.insert_textbox((315, 90, 560, 780), "\n".join(articles[3:]), fontname="china-s", fontsize=10) >= 0
    doc.save(tmp_path / "columns.pdf")
    scan = scanned_pdf(tmp_path / "columns.pdf", tmp_path / "columns-scan.pdf")
    text = squeeze(parse_file(scan, ocr=PageReader()).pages[0].text)
    assert text.startswith("政府采购法摘录")
    starts = [text.find(a[:12]) for a in articles]
    assert all(p >= 0 for p in starts) and starts == sorted(starts), starts
    ends = [text.find(a[-9:-1]) for a in articles]  # each article whole before the next begins
    assert all(start < end < following for start, end, following in zip(starts, ends, starts[1:] + [len(text)]))


def law_sentences(eval_dir, starts: tuple[str, ...]) -> list[str]:
    """Whole one-line articles of page 1 of the law, as its text layer gives them."""
    lines = parse_file(eval_dir / "docs" / LAW).pages[0].text.splitlines()
    found = [line for line in lines if line.startswith(starts) and line.endswith("。")]
    assert len(found) == len(starts)
    return found


def test_a_scan_pasted_into_a_text_page_is_read_in_its_place(eval_dir, tmp_path, monkeypatch):
    """Typed articles of the law's page 1 at the top, a scanned band of its page 2 (holding a gold phrase)
    below them and one more typed article under the scan: the typed lines come back exactly, the scan's
    phrase by OCR, top to bottom; only the scan's clip is rendered and read, counted as one page used OCR."""
    law = eval_dir / "docs" / LAW
    (phrase,) = [a for a, pages in gold(eval_dir, LAW).items() if pages == [2]]
    source = pymupdf.open(law)[1]
    end = source.search_for(phrase[-4:])[0]  # the phrase may wrap: the band reaches two lines above its end
    top = max(0.0, end.y0 / source.rect.height - 0.06)
    band = page_image(law, 2, clip=(top, top + 0.12))
    above = law_sentences(eval_dir, ("第三条", "第四条"))
    (below,) = law_sentences(eval_dir, ("第六条",))
    doc = pymupdf.open()
    page = doc.new_page(width=source.rect.width, height=source.rect.height)
    for n, sentence in enumerate(above):
        page.insert_text((60, 80 + 20 * n), sentence, fontname="china-s", fontsize=11)
    scan = pymupdf.Rect(0, 420, page.rect.width, 420 + page.rect.width * band.height / band.width)
    page.insert_image(scan, stream=band.tobytes("png"))
    page.insert_text((60, scan.y1 + 40), below, fontname="china-s", fontsize=11)
    doc.save(tmp_path / "mixed.pdf")

    shapes, queued, done = [], [], []
    real = ocr.recognise
    monkeypatch.setattr(ocr, "recognise", lambda bgr, language="ch": shapes.append(bgr.shape) or real(bgr, language))
    reader = PageReader(on_ocr=lambda q, d: (queued.append(q), done.append(d)))
    parsed = parse_file(tmp_path / "mixed.pdf", ocr=reader)
    text = parsed.pages[0].text
    assert all(sentence in text.splitlines() for sentence in above + [below])
    squeezed = squeeze(text)
    where = [squeezed.find(squeeze(s)) for s in above] + [squeezed.find(squeeze(phrase)), squeezed.find(squeeze(below))]
    assert all(p >= 0 for p in where) and where == sorted(where), where
    assert (parsed.ocr_pages, reader.pages, sum(queued), sum(done)) == (1, 1, 1, 1)
    ((height, width, _),) = shapes  # the clip at RENDER_DPI, not the page
    assert width == pytest.approx(page.rect.width * ocr.RENDER_DPI / 72, abs=2)
    assert height == pytest.approx(scan.height * ocr.RENDER_DPI / 72, abs=2)


def test_a_logo_a_banner_and_a_background_under_text_are_not_ocrd(eval_dir, tmp_path, monkeypatch):
    """Text-layer pages with images that hold writing but are no scanned text: a small logo, a letterhead
    banner across the page under an inch tall, and a full-page image under the page's own text."""
    law = eval_dir / "docs" / LAW
    sentences = law_sentences(eval_dir, ("第三条", "第四条", "第六条"))
    logo = page_image(law, 1, dpi=100, clip=(0.05, 0.09)).tobytes("png")  # the law's title, drawn
    banner = page_image(law, 1, dpi=150, clip=(0.05, 0.12)).tobytes("png")
    background = page_image(law, 2, dpi=72).tobytes("png")
    doc = pymupdf.open()
    for image, rect in ((logo, (420, 20, 560, 60)), (banner, (0, 10, 595, 60)), (background, (0, 0, 595, 842))):
        page = doc.new_page(width=595, height=842)
        page.insert_image(rect, stream=image)
        for n, sentence in enumerate(sentences):
            page.insert_text((60, 120 + 20 * n), sentence, fontname="china-s", fontsize=11)
    doc.save(tmp_path / "decorated.pdf")
    forbid_ocr(monkeypatch)
    reader = PageReader()
    parsed = parse_file(tmp_path / "decorated.pdf", ocr=reader)
    assert (parsed.ocr_pages, reader.pages) == (0, 0)
    assert all(sentences == page.text.splitlines() for page in parsed.pages)


def test_a_scan_stored_as_strips_or_in_two_layers_is_one_region(eval_dir):
    """Six strips too small to count alone, and two images on the same box (background and text mask), are
    each one region: read once, not in pieces or twice."""
    (sentence,) = law_sentences(eval_dir, ("第三条",))
    strip = page_image(eval_dir / "docs" / LAW, 2, clip=(0.2, 0.225)).tobytes("png")
    doc = pymupdf.open()
    for boxes in ([(0, 300 + 21 * k, 595, 321 + 21 * k) for k in range(6)], [(0, 300, 595, 426)] * 2):
        page = doc.new_page(width=595, height=842)
        page.insert_text((60, 80), sentence, fontname="china-s", fontsize=11)
        for box in boxes:
            page.insert_image(box, stream=strip, keep_proportion=False)
        assert [tuple(r) for r in ocr.scanned_regions(page)] == [(0, 300, 595, 426)]


# ---------------------------------------------------------------------------------------------- reading order
def row(y: float, *cells: tuple[float, float, str]) -> list[Segment]:
    return [Segment(x0, y, x1, y + 20, text) for x0, x1, text in cells]


def test_reading_order_columns_spanning_lines_and_table_rows():
    title = row(0, (100, 900, "标题横跨两栏"))
    body = []
    for i in range(5):  # two columns whose lines sit on the same rows
        body += row(40 + 30 * i, (100, 480, f"左{i}"), (520, 900, f"右{i}"))
    footer = row(200, (100, 900, "横跨两栏的结语"))
    below = []
    for i in range(4):
        below += row(240 + 30 * i, (100, 480, f"下左{i}"), (520, 900, f"下右{i}"))
    order = [" ".join(s.text for s in line) for line in reading_order(below + footer + body[::-1] + title)]
    assert order == (["标题横跨两栏"] + [f"左{i}" for i in range(5)] + [f"右{i}" for i in range(5)] + ["横跨两栏的结语"]
                     + [f"下左{i}" for i in range(4)] + [f"下右{i}" for i in range(4)])

    # A table of short cells is read row by row, not column by column.
    table = []
    for i in range(6):
        table += row(30 * i, (100, 260, f"名称{i}"), (400, 470, f"{i}元"), (700, 800, f"第{i}项"))
    assert [" ".join(s.text for s in line) for line in reading_order(table[::-1])] == \
        [f"名称{i} {i}元 第{i}项" for i in range(6)]

    # One column with short last lines and a centred heading stays one column.
    page = row(0, (400, 600, "第一章 总则")) + row(30, (100, 900, "第一条 甲" * 8)) + row(60, (100, 300, "乙。"))
    page += row(90, (100, 900, "第二条 丙" * 8)) + row(120, (100, 250, "丁。")) + row(150, (400, 600, "第二章 附则"))
    page += row(180, (100, 900, "第三条 戊" * 8)) + row(210, (100, 260, "己。"))
    assert [line[0].text for line in reading_order(page[::-1])] == [s.text for s in page]


def test_low_confidence_lines_are_kept_marked_and_reach_the_chunk(monkeypatch, tmp_path):
    segments = [Segment(50, 50, 900, 80, "中华人民共和国政府采购法", 0.99),
                Segment(50, 100, 900, 130, "第二条 本法适用于在中华人民共和国境内进行的政府采购。", 0.42)]
    monkeypatch.setattr(ocr, "recognise", lambda _bgr, _language="ch": segments)
    image = tmp_path / "通知.png"
    from PIL import Image

    Image.new("L", (1000, 200), 255).save(image)
    parsed = parse_file(image, ocr=PageReader())
    assert parsed.pages[0].text.splitlines() == [segments[0].text, segments[1].text + LOW_CONFIDENCE_MARK]
    assert parsed.title == segments[0].text
    chunks = split_document(clean_document(parsed))
    assert chunks[-1].text.endswith("政府采购。" + LOW_CONFIDENCE_MARK)
    assert ocr.MIN_CONFIDENCE > 0.42


def test_ocr_results_are_cached_by_the_pixels(monkeypatch, tmp_path):
    calls = []

    def fake(bgr, _language="ch"):
        calls.append(bgr.shape)
        return [Segment(10, 10, 200, 30, f"第{len(calls)}次读", 0.99)]

    monkeypatch.setattr(ocr, "recognise", fake)
    from PIL import Image

    for name, shade in (("a.png", 255), ("b.png", 250)):
        Image.new("L", (300, 100), shade).save(tmp_path / name)
    reader = PageReader(cache_dir=tmp_path / "cache")
    assert parse_file(tmp_path / "a.png", ocr=reader).pages[0].text == "第1次读\n"
    assert parse_file(tmp_path / "a.png", ocr=reader).pages[0].text == "第1次读\n"  # same pixels: from the cache
    assert parse_file(tmp_path / "b.png", ocr=reader).pages[0].text == "第2次读\n"
    assert (reader.pages, reader.cached, len(calls)) == (2, 1, 2)
    other = PageReader(cache_dir=tmp_path / "cache")  # a later run finds it on disk
    assert parse_file(tmp_path / "a.png", ocr=other).pages[0].text == "第1次读\n" and other.cached == 1


def test_lines_text_joins_pieces_of_a_line():
    assert lines_text([[Segment(0, 0, 10, 10, "第一条"), Segment(20, 0, 90, 10, "本法")],
                       [Segment(0, 20, 10, 30, "apt-get"), Segment(20, 20, 90, 30, "install")]]) == \
        "第一条本法\napt-get install\n"


# ---------------------------------------------------------------------------------------------- image files
def test_png_jpeg_and_multipage_tiff_give_their_gold_phrases(eval_dir, tmp_path):
    """Bands of real pages as image files: a PNG, a JPEG and a two-page TIFF whose pages are cited apart."""
    from PIL import Image

    phrases = gold(eval_dir, LAW)
    law = eval_dir / "docs" / LAW
    bands = {}
    for phrase, pages in phrases.items():
        if pages in ([2], [5]):
            page = pymupdf.open(law)[pages[0] - 1]
            end = page.search_for(phrase[-4:])[0]  # a phrase may wrap: the band reaches two lines above its end
            top = max(0.0, end.y0 / page.rect.height - 0.05)
            pix = page_image(law, pages[0], clip=(top, top + 0.1))
            bands[phrase] = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    assert len(bands) >= 2
    (first, one), (second, two) = list(bands.items())[:2]
    one.save(tmp_path / "一.png")
    one.save(tmp_path / "一.jpg", quality=85)
    one.save(tmp_path / "两页.tif", save_all=True, append_images=[two], compression="tiff_deflate")
    reader = PageReader()
    for name in ("一.png", "一.jpg"):
        parsed = parse_file(tmp_path / name, ocr=reader)
        assert parsed.kind == "image" and parsed.page_count == 1 and phrase_pages(parsed, first) == {1}, name
    tiff = parse_file(tmp_path / "两页.tif", ocr=reader)
    assert tiff.page_count == 2 and phrase_pages(tiff, first) == {1} and phrase_pages(tiff, second) == {2}
    assert reader.pages == 4


def test_an_image_without_text_fails_saying_so(tmp_path):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1600, 1200), "white")
    ImageDraw.Draw(image).ellipse((300, 200, 1300, 1000), fill=(200, 60, 60))  # a drawing, no writing
    image.save(tmp_path / "照片.jpg")
    with pytest.raises(ParseError, match=r"^照片.jpg: no text: OCR found none in the image"):
        parse_file(tmp_path / "照片.jpg", ocr=PageReader())


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit grey pixels and holds a few bytes of them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def real_png(tmp_path) -> bytes:
    from PIL import Image

    Image.effect_noise((400, 300), 60).save(tmp_path / "seed.png")
    return (tmp_path / "seed.png").read_bytes()


BAD_IMAGES = {  # name: (bytes, words the reason must hold)
    "截断.png": (lambda tmp: real_png(tmp)[:200], "damaged PNG image: the image cannot be decoded"),
    "乱码.jpg": (lambda tmp: bytes(range(256)) * 40, "not a JPEG image, or a damaged one"),
    "其实是PDF.tif": (lambda tmp: b"%PDF-1.7\n" + bytes(3000), "not a TIFF image, or a damaged one"),
    "巨幅.png": (lambda tmp: png_header(12_000, 10_000),
                 "12,000 x 10,000 pixels (120 megapixels), over the limit of 100 (setting limits.max_image_megapixels)"),
    "炸弹.png": (lambda tmp: png_header(40_000, 40_000), "decompression bomb"),
    "空.png": (lambda tmp: b"", "empty file"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_each_bad_image_gets_its_own_reason(tmp_path, name, monkeypatch):
    forbid_ocr(monkeypatch)
    make, words = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(make(tmp_path))
    with pytest.raises(ParseError) as info:
        parse_file(tmp_path / name, LimitSettings(max_image_megapixels=100), ocr=PageReader())
    assert str(info.value).startswith(name + ": ") and words in info.value.reason


def test_a_100_megapixel_scan_is_shrunk_and_read_in_bounded_memory(eval_dir, tmp_path):
    """10,000 x 10,000 pixels with a band of a real page drawn large on it: shrunk to an A3 page's pixels and
    read, in about a GB at peak, most of it text detection (a child process, so the peak is this file's alone;
    detection at full size would need over ten)."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(HERE)!r}, {str(REPO)!r}]
        from PIL import Image
        from scans import page_image
        pix = page_image({str(eval_dir / "docs" / LAW)!r}, 2, dpi=700, clip=(0.08, 0.2))
        band = Image.frombytes("L", (pix.width, pix.height), pix.samples)
        canvas = Image.new("L", (10_000, 10_000), 255)
        canvas.paste(band, (2_000, 4_000))
        canvas.save({str(tmp_path / "海报.png")!r}, compress_level=1)
        del canvas, band, pix
        import gc; gc.collect()
        from ingest.ocr import PageReader
        from ingest.parse import parse_file
        def peak_kb():  # VmHWM: ru_maxrss would keep the peak of the pytest process that forked this one
            status = open("/proc/self/status").read()
            return int(status.split("VmHWM:")[1].split()[0])
        before = peak_kb()
        text = parse_file({str(tmp_path / "海报.png")!r}, ocr=PageReader()).pages[0].text
        print(before, peak_kb(), repr(text))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    _before, peak_kb, text = out.stdout.strip().split(" ", 2)
    original = parse_file(eval_dir / "docs" / LAW).pages[1].text
    assert squeeze(original.splitlines()[2])[:20] in squeeze(ast.literal_eval(text))
    assert int(peak_kb) < 1_500_000


def test_ocr_engine_loads_and_reads_without_the_network(eval_dir):
    """Its models are inside the wheel: with every socket refused, the engine still loads and reads."""
    script = textwrap.dedent(f"""
        import socket, sys
        def refuse(*a, **k):
            raise OSError("network used")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        sys.path[:0] = [{str(HERE)!r}, {str(REPO)!r}]
        import numpy as np
        from ingest.ocr import recognise
        from scans import page_image
        pix = page_image({str(eval_dir / "docs" / LAW)!r}, 1, dpi=150, clip=(0.05, 0.12))
        grey = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width)
        print("".join(s.text for s in recognise(np.repeat(grey[:, :, None], 3, axis=2))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "政府采购法" in out.stdout


# ---------------------------------------------------------------------------------------------- a folder
@pytest.mark.slow
def test_folder_with_scans_and_bad_images_ingests_the_good_ones_and_redoes_no_ocr(eval_dir, tmp_path, settings,
                                                                                 monkeypatch, capsys):
    from ingest.__main__ import main
    from ingest.pipeline import ingest_folder
    from kbcore.store import KnowledgeBase

    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    scanned_pdf(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", docs / "发布办法.pdf", pages=[1])
    pix = page_image(eval_dir / "docs" / LAW, 2, clip=(0.1, 0.2))
    pix.save(docs / "摘录.png")
    queued, done = [], []
    first = ingest_folder(docs, settings, kb_path=kb_path, on_ocr=lambda q, d: (queued.append(q), done.append(d)))
    assert not first.failures and first.count("added") == 2
    assert first.ocr_pages == 2 and sum(queued) == 2 and sum(done) == 2
    assert first.stage_seconds["ocr"] > 0 and first.summary()["ocr_pages"] == 2

    # Unchanged files: nothing parsed, nothing OCR'd. Bad images beside them fail alone; a damaged new
    # version of the PNG keeps the stored one.
    forbid_ocr(monkeypatch)
    stored = KnowledgeBase(kb_path, readonly=True)
    try:
        png_chunks = [c.text for c in stored.chunks("摘录.png")]
    finally:
        stored.close()
    for name, (make, _words) in BAD_IMAGES.items():
        (docs / name).write_bytes(make(tmp_path))
    again = ingest_folder(docs, settings.with_overrides(limits={"max_image_megapixels": 100}), kb_path=kb_path)
    assert again.ocr_pages == 0 and again.count("skipped") == 2
    reasons = {r.source: r.reason for r in again.failures}
    assert set(reasons) == set(BAD_IMAGES) and all(words in reasons[n] for n, (_m, words) in BAD_IMAGES.items())
    (docs / "摘录.png").write_bytes((docs / "摘录.png").read_bytes()[:300])
    broken = ingest_folder(docs, settings, kb_path=kb_path)
    assert "(the previously ingested version is kept)" in {r.source: r.reason for r in broken.failures}["摘录.png"]
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        assert [c.text for c in kb.chunks("摘录.png")] == png_chunks and png_chunks
    finally:
        kb.close()
    for name in BAD_IMAGES:
        (docs / name).unlink(missing_ok=True)
    pix.save(docs / "摘录.png")

    # New chunk settings split every file again: the pages come from the OCR cache, not the engine.
    resplit = ingest_folder(docs, settings.with_overrides(chunking={"chunk_size": 200}), kb_path=kb_path)
    assert not resplit.failures and resplit.count("updated") == 2
    assert (resplit.ocr_pages, resplit.ocr_pages_cached) == (0, 2)

    # --no-ocr: a new scan fails saying why, a new image is skipped, and the stored versions stay.
    page_image(eval_dir / "docs" / LAW, 5, clip=(0.1, 0.2)).save(docs / "新图.png")
    (docs / "新扫描.pdf").write_bytes(scanned_pdf(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf",
                                                 tmp_path / "x.pdf", pages=[1, 2]).read_bytes())
    import os

    for name in [n for n in os.environ if n.startswith("KBCHAT_")]:
        monkeypatch.delenv(name)
    (tmp_path / "kbchat.toml").write_text("[chunking]\nchunk_size = 200\n", encoding="utf-8")
    capsys.readouterr()
    assert main([str(docs), "--kb", str(kb_path), "--config", str(tmp_path / "kbchat.toml"), "--no-ocr", "--quiet",
                 "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [f["source"] for f in summary["failures"]] == ["新扫描.pdf"]
    assert "OCR is off" in summary["failures"][0]["reason"]
    assert summary["files_skipped"] == 3 and summary["ocr_pages"] == 0


def test_ocr_settings_from_file_and_environment(tmp_path):
    from kbcore.config import load_settings

    assert load_settings(env={}, use_default_file=False).ingest.ocr is True  # on by default
    (tmp_path / "kbchat.toml").write_text('[ingest]\nocr = false\nocr_language = "ch"\n', encoding="utf-8")
    assert load_settings(tmp_path / "kbchat.toml", env={}).ingest.ocr is False
    assert load_settings(env={"KBCHAT_INGEST__OCR": "false"}, use_default_file=False).ingest.ocr is False
    with pytest.raises(ValueError, match="ocr_language"):
        load_settings(env={"KBCHAT_INGEST__OCR_LANGUAGE": "fr"}, use_default_file=False)


@pytest.mark.slow
def test_ocr_cache_keeps_only_what_stored_documents_use(eval_dir, tmp_path, settings, monkeypatch):
    """Each stored scan records the cache keys it used (refs/<sha256>.txt); a pruned document's entries and refs go,
    entries from before refs existed go too, the other document's stay (it is parsed again without OCR), and a
    delete outside an ingest is pruned by the next run, even one with nothing else to do."""
    from ingest.pipeline import OCR_CACHE, content_hash, delete_document, ingest_folder

    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    a = scanned_pdf(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", docs / "甲.pdf", pages=[1])
    b = scanned_pdf(eval_dir / "docs" / LAW, docs / "乙.pdf", pages=[2])
    digests = {a.name: content_hash(a), b.name: content_hash(b)}
    first = ingest_folder(docs, settings, kb_path=kb_path)
    assert not first.failures and first.count("added") == 2 and first.ocr_pages == 2
    cache = kb_path / OCR_CACHE

    def entries() -> set[str]:
        return {p.stem for p in cache.glob("??/*.json")}

    def refs() -> dict[str, set[str]]:
        return {p.stem: set(p.read_text(encoding="utf-8").split()) for p in (cache / "refs").glob("*.txt")}

    assert set(refs()) == set(digests.values())
    keys = {name: refs()[digest] for name, digest in digests.items()}
    assert all(len(k) == 1 for k in keys.values()) and entries() == keys[a.name] | keys[b.name]

    old = "0" * 64  # an entry written before refs were recorded: named by no refs file
    (cache / "00").mkdir(exist_ok=True)
    (cache / "00" / f"{old}.json").write_text("[]", encoding="utf-8")
    b.unlink()
    pruned = ingest_folder(docs, settings, kb_path=kb_path, prune=True)
    assert [r.status for r in pruned.results] == ["skipped", "deleted"]
    assert entries() == keys[a.name] and set(refs()) == {digests[a.name]}

    forbid_ocr(monkeypatch)  # the remaining scan, parsed again, reads its page from the cache
    resplit = ingest_folder(docs, settings.with_overrides(chunking={"chunk_size": 200}), kb_path=kb_path)
    assert resplit.count("updated") == 1 and (resplit.ocr_pages, resplit.ocr_pages_cached) == (0, 1)
    assert entries() == keys[a.name] and set(refs()) == {digests[a.name]}

    # The app's delete leaves the cache alone; the next ingest run prunes it though it has nothing else to write.
    assert delete_document(kb_path, a.name)
    assert entries() == keys[a.name]
    (tmp_path / "empty").mkdir()
    ingest_folder(tmp_path / "empty", settings.with_overrides(chunking={"chunk_size": 200}), kb_path=kb_path)
    assert entries() == set() and refs() == {}
