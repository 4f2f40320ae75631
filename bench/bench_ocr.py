"""OCR benchmark: character accuracy and speed of ingest.ocr on scanned copies of real pages, by render resolution.

    .venv/bin/python bench/bench_ocr.py [--dpi 100,150,200] [--pages N] [--degrade] [--scans DIR]

Pages of ../shared/eval/docs PDFs are rendered to greyscale images at 200 dpi (tests/ingest/scans.py, a scanner's
default) and then read the way ingest reads a scanned page: rendered at each --dpi, OCR'd, put in reading
order. Accuracy is 1 - edit distance / length against the page's text layer, whitespace removed. The score
table shows how often a line with a given recognition score is wrong (not found verbatim in the text layer):
where MIN_CONFIDENCE marks lines. Clean renders score high throughout: --degrade makes poor scans instead
(100 dpi, blurred, speckled, saved as a low-quality JPEG), which is where low scores occur. --scans DIR writes scanned copies of the regulation PDFs the QA set cites, to
ingest and compare with ``python -m retrieval.eval`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "ingest")]

from ingest.ocr import LOW_CONFIDENCE_MARK, PageReader, lines_text, reading_order, recognise, render_page  # noqa: E402
from scans import scanned_pdf  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"
# Regulation pages (Chinese articles) and Debian pages (Chinese with English commands and URLs).
SAMPLE = [("zhengfu-caigou-fa.pdf", 2), ("zhaobiao-toubiao-fa.pdf", 4), ("zfcg-huowu-fuwu-zhaobiao-toubiao-banfa.pdf", 3),
          ("zhengfu-caigou-fa-shishi-tiaoli.pdf", 6), ("debian-faq-zh-cn.pdf", 20), ("maint-guide.zh-cn.pdf", 12),
          ("zfcg-xuqiu-guanli-banfa.pdf", 2), ("debian-faq-zh-cn.pdf", 45)]


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def degraded_pdf(src: Path, number: int, dst: Path) -> Path:
    """One page as a poor scan: 100 dpi grey, blurred, with speckle noise, stored as a JPEG of quality 30."""
    import io
    import random

    import pymupdf
    from PIL import Image, ImageFilter

    from scans import page_image

    pix = page_image(src, number, dpi=100)
    image = Image.frombytes("L", (pix.width, pix.height), pix.samples).filter(ImageFilter.GaussianBlur(0.8))
    rng = random.Random(number)
    pixels = image.load()
    for _ in range(image.width * image.height // 50):
        x, y = rng.randrange(image.width), rng.randrange(image.height)
        pixels[x, y] = rng.choice((0, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    with pymupdf.open(src) as doc, pymupdf.open() as out:
        page = out.new_page(width=doc[number - 1].rect.width, height=doc[number - 1].rect.height)
        page.insert_image(page.rect, stream=buffer.getvalue())
        out.save(dst)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dpi", default="100,150,200")
    ap.add_argument("--pages", type=int, default=len(SAMPLE), help="how many sample pages")
    ap.add_argument("--degrade", action="store_true", help="poor scans: 100 dpi, blur, noise, JPEG quality 30")
    ap.add_argument("--scans", type=Path, help="write scanned copies of the QA set's regulation PDFs here and stop")
    args = ap.parse_args()

    if args.scans:
        args.scans.mkdir(parents=True, exist_ok=True)
        sources = sorted({json.loads(line)["source"] for line in open(EVAL / "qa" / "regulations.jsonl", encoding="utf-8")})
        for name in sources:
            scanned_pdf(EVAL / "docs" / name, args.scans / name)
        print(f"{len(sources)} scanned PDFs in {args.scans}")
        return 0

    import tempfile

    import pymupdf

    with tempfile.TemporaryDirectory() as tmp:
        scans = []
        for name, number in SAMPLE[:args.pages]:
            src = EVAL / "docs" / name
            with pymupdf.open(src) as doc:
                reference = squeeze(doc[number - 1].get_text())
            if args.degrade:
                scan = degraded_pdf(src, number, Path(tmp) / f"{len(scans)}.pdf")
                scans.append((f"{name}:{number}", reference, pymupdf.open(scan)[0]))
            else:
                scan = scanned_pdf(src, Path(tmp) / f"{len(scans)}.pdf", [number])
                scans.append((f"{name}:{number}", reference, pymupdf.open(scan)[number - 1]))
        recognise(render_page(scans[0][2], 50))  # loads the engine outside the timings
        print(f"{len(scans)} pages; accuracy = 1 - edit distance / characters of the text layer")
        print(f"{'dpi':>4} {'accuracy':>9} {'s/page':>7} {'marked':>7}   per page")
        bins = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.01]
        for dpi in map(int, args.dpi.split(",")):
            errors = chars = 0
            seconds = 0.0
            marked = 0
            per_page = []
            by_score = [[0, 0] for _ in bins[:-1]]  # [lines, wrong] per score bin
            for _label, reference, page in scans:
                bgr = render_page(page, dpi)
                started = time.perf_counter()
                reader = PageReader()
                segments = reader.segments(bgr)
                text = lines_text(reading_order(segments))
                seconds += time.perf_counter() - started
                marked += text.count(LOW_CONFIDENCE_MARK)
                got = squeeze(text.replace(LOW_CONFIDENCE_MARK, ""))
                e = edit_distance(got, reference)
                errors += e
                chars += len(reference)
                per_page.append(f"{1 - e / max(len(reference), 1):.3f}")
                for s in segments:
                    k = next(i for i in range(len(bins) - 1) if bins[i] <= s.score < bins[i + 1])
                    by_score[k][0] += 1
                    by_score[k][1] += squeeze(s.text) not in reference
            print(f"{dpi:>4} {1 - errors / chars:9.4f} {seconds / len(scans):7.2f} {marked:7d}   {' '.join(per_page)}")
            print("      lines by score: " + ", ".join(
                f"[{bins[i]:.2f},{min(bins[i + 1], 1):.2f}) {n} lines {w} wrong" for i, (n, w) in enumerate(by_score) if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
