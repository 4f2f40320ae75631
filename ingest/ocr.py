"""OCR for what has no text layer: PDF pages that are scanned images, scanned regions pasted into PDF pages that
have a text layer, and image files (.png, .jpg/.jpeg, .tif/.tiff; a TIFF page is a page).

- Engine: RapidOCR (``rapidocr-onnxruntime``) with the PP-OCRv4 Chinese/English detection and recognition
  models inside its wheel, so nothing is downloaded. It is imported on first use and built once per process.
- Which PDF pages: those whose text layer is (nearly) empty and that show images (``needs_ocr``) are rendered
  whole; what little text layer there is wins over OCR where the two overlap.
- Which regions of other pages (``scanned_regions``): an image (or adjoining image tiles) big enough to hold
  text, ``MIN_REGION_COVER`` of the page and ``MIN_REGION_SIDE`` each way, with (nearly) no text-layer
  characters over it: a pasted scan, a screenshot of a table, a scanned signature page. Only that clip of the
  page is rendered and read, and its lines go into the page's text before the first text-layer block that
  starts below the region's middle (``ocr_pdf_regions``). Logos, rules and backgrounds under text are not
  read, so a PDF of text alone is never OCR'd.
- Resolution: PDF pages are rendered at ``RENDER_DPI`` (chosen by accuracy against speed, bench/README.md);
  any image is shrunk to at most ``MAX_OCR_PIXELS`` first, so time and memory stay those of a page.
- Reading order: columns, then top to bottom (``reading_order``).
- Low confidence: a line the recogniser is unsure of is kept, followed by ``LOW_CONFIDENCE_MARK``.
- Cache: raw OCR results are kept by the hash of the pixels read, in the knowledge base's ``ocr-cache``
  folder, so a file parsed again (a changed chunking setting, a page added to a scan) re-reads only new pages.
  Unchanged files are not parsed at all (``ingest.pipeline``). The cache holds only what live documents use:
  the keys a file read or wrote (``PageReader.tracking``) are recorded for its version, by the sha256 of its
  bytes, in ``refs/<sha256>.txt`` when it is stored, and ``prune_cache`` deletes the refs of versions no longer
  stored and every entry no remaining refs file names (so OCR text of a deleted document does not stay behind).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from kbcore.config import IngestSettings, LimitSettings

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}

RENDER_DPI = 150
# Larger images are shrunk to this before OCR (an A3 page at RENDER_DPI): text detection's time and memory
# grow with the pixels (bench/README.md).
MAX_OCR_PIXELS = 4_500_000
# A page whose text layer holds fewer non-space characters than this (a stamped page number, a scanner's
# label) and whose images cover at least MIN_IMAGE_COVER of it is a scan.
NEAR_EMPTY_CHARS = 20
MIN_IMAGE_COVER = 0.1
# On a page with a text layer, an image region is read when it covers at least MIN_REGION_COVER of the page,
# is at least MIN_REGION_SIDE points (2.54 cm, five lines of body text) on each side, and fewer than
# NEAR_EMPTY_CHARS text-layer characters lie over it (more: a background under the page's real text). A logo
# is smaller (a 4 x 2 cm logo is 1.3 % of an A4 page), and so is a letterhead banner across the page, which is
# under an inch tall (Debian Edu's manual has one 48 pt tall, 4.9 % of its page); a screenshot of a line or
# two is left out with them. Images under MIN_IMAGE_PIXELS pixels a side (stretched colour bars) hold no text.
MIN_REGION_COVER = 0.04
MIN_REGION_SIDE = 72.0
MIN_IMAGE_PIXELS = 16
# Lines recognised with a lower score are kept but marked: most of them hold a wrong character or more, which
# retrieval tolerates better than a missing line, while a reader should check the page before quoting. Clean
# scans score above it nearly throughout, poor ones below it mostly (bench/README.md).
MIN_CONFIDENCE = 0.95
# "（？）" after a word is how Chinese editions mark a doubtful reading; punctuation, so no search token.
LOW_CONFIDENCE_MARK = "（？）"
# Bump when the engine's settings change what it returns for the same pixels: old cache entries are not used.
OCR_VERSION = "rapidocr-1.4.4-ppocrv4-1"

# on_ocr(queued, done): a file found `queued` more pages (or regions of pages) to OCR, or `done` more were read.
OcrProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Segment:
    """A piece of text on a page image: an OCR line, or a text-layer line of a PDF page (score 1)."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    score: float = 1.0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def width(self) -> float:
        return self.x1 - self.x0


class OcrError(Exception):
    """OCR could not read an image; the parser turns it into a ParseError naming the file and page."""


# ---------------------------------------------------------------------------------------------- engine
_ENGINE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _engine(language: str):
    """One RapidOCR per language and process: loading its three ONNX sessions takes a while."""
    if language != "ch":  # the settings type allows "ch" only; this guards callers that bypass it
        raise OcrError(f"no OCR models for language {language!r}: only 'ch' (Chinese with English) is shipped")
    from rapidocr_onnxruntime import RapidOCR

    # text_score=0 keeps every line (low ones are marked, not dropped); max_side_len is ours to enforce.
    return RapidOCR(text_score=0.0, max_side_len=100_000, print_verbose=False)


def recognise(bgr: np.ndarray, language: str = "ch") -> list[Segment]:
    """OCR lines of an image (BGR, as OpenCV holds it) as axis-aligned segments, in no particular order."""
    engine = _engine(language)
    with _ENGINE_LOCK:  # one page at a time: the sessions already use every core
        # No line-direction classifier: it turned upright lines upside down, and they came back as garbage
        # (bench/bench_ocr.py); pages are scanned upright far more often than not.
        result, _elapsed = engine(bgr, use_cls=False)
    segments = []
    for box, text, score in result or []:
        text = " ".join(str(text).split())
        if not text:
            continue
        xs, ys = [p[0] for p in box], [p[1] for p in box]
        segments.append(Segment(float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)), text, float(score)))
    return segments


# ---------------------------------------------------------------------------------------------- reading order
def reading_order(segments: Sequence[Segment]) -> list[list[Segment]]:
    """Segments grouped into lines in reading order: columns left to right, each top to bottom, and a line
    that spans the columns (a title, a full-width paragraph) between the column blocks above and below it.

    Detection returns lines top to bottom by their top edge (RapidOCR) or sorted by position (RAGFlow's
    deepdoc, which then clusters x0 with k-means to find columns); on a two-column page both interleave the
    columns. Here a column gutter is a vertical band that no narrow segment crosses, with column text on both
    sides and few lines crossing it; those few split the page into blocks, read one after another.
    """
    segments = [s for s in segments if s.text]
    if not segments:
        return []
    height = statistics.median(s.height for s in segments)
    return _lines(_order(list(segments), height), height)


def _order(segments: list[Segment], height: float) -> list[Segment]:
    gutter = _find_gutter(segments, height)
    if gutter is None:
        return sorted(segments, key=lambda s: (s.y0 + s.y1, s.x0))
    left_edge, right_edge = gutter
    out: list[Segment] = []
    block: list[Segment] = []

    def flush():
        left = [s for s in block if (s.x0 + s.x1) / 2 < (left_edge + right_edge) / 2]
        right = [s for s in block if (s.x0 + s.x1) / 2 >= (left_edge + right_edge) / 2]
        out.extend(_order(left, height) + _order(right, height))
        block.clear()

    for s in sorted(segments, key=lambda s: (s.y0 + s.y1, s.x0)):
        if _crosses(s, gutter, height):  # spans the gutter: ends the column block above it
            flush()
            out.append(s)
        else:
            block.append(s)
    flush()
    return out


def _crosses(s: Segment, gutter: tuple[float, float], height: float) -> bool:
    """Whether a segment reaches across the gutter, not counting the margin detection adds round a line."""
    return s.x0 + height < gutter[0] and s.x1 - height > gutter[1]


def _find_gutter(segments: list[Segment], height: float) -> tuple[float, float] | None:
    """(left, right) of the widest gutter between two columns of text, or None for a single column.
    Boxes are taken a line's height narrower on each side: detection pads them, and a narrow gutter can
    be covered by the padding alone."""
    if len(segments) < 6:
        return None
    left = min(s.x0 for s in segments)
    right = max(s.x1 for s in segments)
    width = right - left
    if width <= 0:
        return None
    # Lines as wide as most of the text cannot sit in a column; they are the spanning ones, if any.
    narrow = [s for s in segments if s.width < 0.6 * width]
    if len(narrow) < 6:
        return None
    cover = np.zeros(int(width) + 2, dtype=np.int32)
    for s in narrow:
        a, b = int(s.x0 - left + height), int(s.x1 - left - height) + 1
        if a < b:
            cover[a:b] += 1
    empty = np.flatnonzero(cover == 0)
    if not len(empty):
        return None
    # Runs of empty columns of pixels, strictly inside the text.
    runs = np.split(empty, np.flatnonzero(np.diff(empty) > 1) + 1)
    best = None
    for run in runs:
        a, b = left + run[0], left + run[-1]
        if a - left < 0.15 * width or right - b < 0.15 * width or b - a < 0.5 * height:
            continue
        if best is None or b - a > best[1] - best[0]:
            best = (a, b)
    if best is None:
        return None
    a, b = best
    on_left = [s for s in narrow if s.x1 - height <= a + 1]
    on_right = [s for s in narrow if s.x0 + height >= b - 1]
    spanning = [s for s in segments if _crosses(s, best, height)]
    # Column text: several lines a side, of real width (not a ragged list of labels or table cells), and
    # far more of them than lines crossing the gutter (a one-column page's lines all cross it).
    for side in (on_left, on_right):
        if len(side) < 3 or statistics.median(s.width for s in side) < 0.25 * width:
            return None
    if len(spanning) > 0.5 * min(len(on_left), len(on_right)):
        return None
    return best


def _lines(ordered: list[Segment], height: float) -> list[list[Segment]]:
    """Consecutive segments whose middles lie within half a line's height are one line, left to right."""
    lines: list[list[Segment]] = []
    for s in ordered:
        if lines:
            last = lines[-1]
            middle = sum(x.y0 + x.y1 for x in last) / (2 * len(last))
            if abs((s.y0 + s.y1) / 2 - middle) < 0.5 * height and all(s.x0 >= x.x1 - 0.5 * height or
                                                                       s.x1 <= x.x0 + 0.5 * height for x in last):
                last.append(s)
                continue
        lines.append([s])
    return [sorted(line, key=lambda s: s.x0) for line in lines]


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\uffef"


def lines_text(lines: Sequence[Sequence[Segment]], min_confidence: float = MIN_CONFIDENCE) -> str:
    """One text line per line; pieces of a line joined with a space except between Chinese characters; a
    piece recognised with a score under ``min_confidence`` is followed by ``LOW_CONFIDENCE_MARK``.

    >>> a, b = Segment(0, 0, 50, 20, "第一条", 0.99), Segment(60, 0, 200, 20, "本法适用于", 0.5)
    >>> lines_text([[a, b], [Segment(0, 30, 90, 50, "Debian 12", 0.95)]])
    '第一条本法适用于（？）\\nDebian 12\\n'
    """
    out = []
    for line in lines:
        text = ""
        for s in line:
            piece = s.text + (LOW_CONFIDENCE_MARK if s.score < min_confidence else "")
            if text and not (_is_cjk(text[-1]) and _is_cjk(piece[0])):
                text += " "
            text += piece
        out.append(text + "\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- reader
class PageReader:
    """OCR for one ingest run: the settings, a cache folder (None: no cache), progress, and what was done.

    ``pages`` counts images the engine read (a page, a region of a page, an image file's page), ``cached`` those
    found in the cache, ``seconds`` the time spent rendering, reading and ordering them. Inside ``tracking()``
    the cache keys read or written on that thread are collected (the keys one file used, for its refs)."""

    def __init__(self, settings: IngestSettings | None = None, cache_dir: str | os.PathLike | None = None,
                 on_ocr: OcrProgress | None = None):
        self.settings = settings or IngestSettings()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.on_ocr = on_ocr or (lambda _queued, _done: None)
        self.pages = self.cached = 0
        self.seconds = 0.0
        self._local = threading.local()

    @contextlib.contextmanager
    def tracking(self):
        """Collect, into the set yielded, the cache keys this thread reads or writes until the block ends."""
        keys: set[str] = set()
        outer = getattr(self._local, "keys", None)
        self._local.keys = keys
        try:
            yield keys
        finally:
            self._local.keys = outer

    def segments(self, bgr: np.ndarray) -> list[Segment]:
        """OCR segments of an image, from the cache when the same pixels were read before."""
        key = None
        if self.cache_dir is not None:
            digest = hashlib.sha256(f"{OCR_VERSION}|{self.settings.ocr_language}|{bgr.shape}|".encode())
            digest.update(np.ascontiguousarray(bgr).data)
            key = digest.hexdigest()
            touched = getattr(self._local, "keys", None)
            if touched is not None:
                touched.add(key)
            found = self._cache_get(key)
            if found is not None:
                self.cached += 1
                return found
        segments = recognise(bgr, self.settings.ocr_language)
        self.pages += 1
        if key is not None:
            self._cache_put(key, segments)
        return segments

    def text(self, bgr: np.ndarray, known: Sequence[Segment] = (), elsewhere: Sequence[Segment] = ()) -> str:
        """The image's text in reading order. ``known`` segments (a PDF page's own text, in the image's
        pixels) are taken as they are, and OCR lines that overlap them are dropped; OCR lines that overlap
        ``elsewhere`` segments (text the caller has already) are dropped too, and those are not returned."""
        started = time.perf_counter()
        try:
            drop = list(known) + list(elsewhere)
            found = [s for s in self.segments(bgr) if not any(_overlap(s, k) > 0.5 for k in drop)]
            return lines_text(reading_order(list(known) + found))
        finally:
            self.seconds += time.perf_counter() - started
            self.on_ocr(0, 1)

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> list[Segment] | None:
        try:
            rows = json.loads(self._cache_path(key).read_text(encoding="utf-8"))
            return [Segment(*row) for row in rows]
        except (OSError, ValueError, TypeError):  # absent, or a damaged entry: read the image again
            return None

    def _cache_put(self, key: str, segments: list[Segment]) -> None:
        path = self._cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            rows = [[s.x0, s.y0, s.x1, s.y1, s.text, s.score] for s in segments]
            partial.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
            os.replace(partial, path)
        except OSError:  # a read-only or full disk costs the cache, not the ingest
            pass


CACHE_REFS = "refs"  # inside the cache folder: <document sha256>.txt, the keys that version of a document used


def write_cache_refs(cache_dir: str | os.PathLike, digest: str, keys: Iterable[str]) -> None:
    """Record the cache keys the document version ``digest`` (sha256 of its bytes) used, one a line, written
    atomically (a temporary file, then os.replace). A disk that refuses costs the refs, not the ingest: the
    entries are then unreferenced and go at the next prune (the file is OCR'd again if parsed again)."""
    path = Path(cache_dir) / CACHE_REFS / f"{digest}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text("".join(f"{k}\n" for k in sorted(keys)), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def prune_cache(cache_dir: str | os.PathLike, live_digests: Iterable[str], keep_after: float | None = None) -> int:
    """Make the cache hold only what live documents use: delete the refs of document versions not in
    ``live_digests`` and every entry (and leftover temporary file) that no remaining refs file names. Entries
    modified after ``keep_after`` (a time.time()) are kept: another ingest may have read them for a file it has
    not stored yet (they go at a later prune if nothing names them). Entries written before refs existed have
    no refs: they are unreferenced and go at the first prune. A missing cache folder costs nothing. Returns the
    number of entries deleted.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for k in ("a" * 64, "b" * 64):
    ...     (d / k[:2]).mkdir(parents=True); _ = (d / k[:2] / f"{k}.json").write_text("[]")
    >>> write_cache_refs(d, "1" * 64, ["a" * 64]); write_cache_refs(d, "2" * 64, ["b" * 64])
    >>> prune_cache(d, ["1" * 64])
    1
    >>> sorted(p.name[:2] for p in d.rglob("*.json")), sorted(p.name[:2] for p in (d / CACHE_REFS).iterdir())
    (['aa'], ['11'])
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    live, used = set(live_digests), set()
    refs = root / CACHE_REFS
    for path in (sorted(refs.iterdir()) if refs.is_dir() else []):
        digest = path.name.split(".")[0]
        try:
            if path.suffix == ".txt" and digest in live:
                used.update(path.read_text(encoding="utf-8").split())
            elif keep_after is None or path.stat().st_mtime <= keep_after:
                path.unlink()
        except OSError:
            pass
    deleted = 0
    for folder in sorted(root.iterdir()):
        if folder.name == CACHE_REFS or not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.iterdir()):
            key = path.name.split(".")[0]
            if _is_key(key) and key in used and path.suffix == ".json":
                continue
            try:
                if keep_after is not None and path.stat().st_mtime > keep_after:
                    continue
                path.unlink()
                deleted += path.suffix == ".json"
            except OSError:
                pass
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    return deleted


def _overlap(a: Segment, b: Segment) -> float:
    """Share of ``a``'s area that ``b`` covers."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    area = a.width * a.height
    return w * h / area if w > 0 and h > 0 and area > 0 else 0.0


# ---------------------------------------------------------------------------------------------- PDF pages
def needs_ocr(page, text: str) -> bool:
    """Whether a PDF page is a scan, to be rendered and read whole: (nearly) no text layer, and images covering
    a real part of the page. Any other page is read only in its ``scanned_regions``, if it has some."""
    if len("".join(text.split())) >= NEAR_EMPTY_CHARS:
        return False
    area = abs(page.rect)
    if not area:
        return False
    covered = 0.0
    for info in page.get_image_info():
        box = page.rect & info["bbox"]
        covered += abs(box) if not box.is_empty else 0.0
    return covered / area >= MIN_IMAGE_COVER


def scanned_regions(page) -> list:
    """The image regions (``pymupdf.Rect``, top to bottom) of a page that OCR reads although the page is no
    scan: images, with adjoining tiles of one image joined, that cover MIN_REGION_COVER of the page, are
    MIN_REGION_SIDE points each way and have fewer than NEAR_EMPTY_CHARS text-layer characters over them.
    Regions that overlap (a scan stored as a colour background plus a text mask) are joined into one, so
    nothing is read twice. For a page that is no scan: the caller asks ``needs_ocr`` first, a scan is read whole."""
    import pymupdf

    area = abs(page.rect)
    # get_images reads the page's resources only; get_image_info runs its content once more, as long as a
    # text extraction, so it is left to pages that have images. (An inline image, too small to be a scan
    # by the PDF standard's advice, is not looked at.)
    if not area or not page.get_images():
        return []
    boxes = []
    for info in page.get_image_info():
        box = page.rect & pymupdf.Rect(info["bbox"])
        if not box.is_empty and min(info.get("width", 0), info.get("height", 0)) >= MIN_IMAGE_PIXELS:
            boxes.append(box)
    # Tiles (a scan stored as strips): boxes that touch edge to edge, overlapping by little, are one image.
    boxes = _join(boxes, lambda a, b: (pymupdf.Rect(a) + (-1, -1, 1, 1)).intersects(b)
                  and abs(a & b) < 0.1 * min(abs(a), abs(b)))
    regions = [box for box in boxes if abs(box) >= MIN_REGION_COVER * area
               and min(box.width, box.height) >= MIN_REGION_SIDE
               and len("".join(page.get_text("text", clip=box).split())) < NEAR_EMPTY_CHARS]
    regions = _join(regions, lambda a, b: a.intersects(b))
    return sorted(regions, key=lambda r: (r.y0, r.x0))


def _join(boxes: list, touch: Callable) -> list:
    """Boxes joined into their union wherever ``touch(a, b)``, until no two touch."""
    boxes = list(boxes)
    joined = True
    while joined:
        joined = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if touch(boxes[i], boxes[j]):
                    boxes[i] = boxes[i] | boxes.pop(j)
                    joined = True
                    break
            if joined:
                break
    return boxes


def render_page(page, dpi: int = RENDER_DPI, clip=None) -> np.ndarray:
    """A PDF page (or its ``clip`` rectangle) as a BGR image at ``dpi``, or at less when that would exceed
    MAX_OCR_PIXELS (a poster-sized page); the scale used is ``image width / page (or clip) width``."""
    import pymupdf

    rect = page.rect if clip is None else pymupdf.Rect(clip)
    width, height = rect.width / 72, rect.height / 72
    dpi = min(dpi, (MAX_OCR_PIXELS / max(width * height, 1e-6)) ** 0.5)
    pix = page.get_pixmap(dpi=max(int(dpi), 1), colorspace=pymupdf.csRGB, alpha=False, clip=clip)
    rgb = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.h, pix.w, 3)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def text_layer_segments(page, scale: float, clip=None) -> list[Segment]:
    """The page's own text lines, in the pixels of an image rendered at ``scale`` pixels a point (of the page,
    or of its ``clip`` rectangle: then only the lines that reach into it)."""
    left, top = (clip[0], clip[1]) if clip is not None else (0.0, 0.0)
    out = []
    for block in page.get_text("dict", clip=clip)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"]).strip()
            if text:
                x0, y0, x1, y1 = line["bbox"]
                out.append(Segment((x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale,
                                   (y1 - top) * scale, text))
    return out


def ocr_pdf_page(page, reader: PageReader) -> str:
    """A scanned page's text: its own text layer where there is one, OCR for the rest."""
    bgr = render_page(page)
    scale = bgr.shape[1] / page.rect.width
    return reader.text(bgr, text_layer_segments(page, scale))


def ocr_pdf_regions(page, text: str, regions: Sequence, reader: PageReader) -> str:
    """``text`` (the page's text as parsed from its text layer) with what OCR reads in each of ``regions``
    (``scanned_regions``) put in before the first text-layer block, in the text's order, that starts below the
    region's middle, or at the end. Only the regions are rendered; a few text-layer characters over a region
    stay where the text layer has them and are not read again; a region read as empty adds nothing."""
    starts = _block_starts(page, text)
    pieces: list[tuple[int, int, str]] = []
    for order, rect in enumerate(regions):
        bgr = render_page(page, clip=rect)
        scale = bgr.shape[1] / max(rect.width, 1e-6)
        read = reader.text(bgr, elsewhere=text_layer_segments(page, scale, clip=rect))
        if not read.strip():
            continue
        middle = (rect.y0 + rect.y1) / 2
        at = next((offset for offset, top in starts if top >= middle), len(text))
        pieces.append((at, order, read))
    out, done = [], 0
    for at, _order, read in sorted(pieces):
        out.append(text[done:at])
        if at and not text[at - 1] == "\n":
            out.append("\n")
        out.append(read)
        done = at
    out.append(text[done:])
    return "".join(out)


def _block_starts(page, text: str) -> list[tuple[int, float]]:
    """(offset of its line in ``text``, top on the page) of each text-layer block whose first line is found at
    the start of a line of ``text``, looked for in the order the blocks come, each after the one before it."""
    starts, cursor = [], 0
    for _x0, y0, _x1, _y1, block, _no, kind in page.get_text("blocks"):
        first = next((line.strip() for line in block.splitlines() if line.strip()), "")
        if kind != 0 or not first:
            continue
        at = text.find(first, cursor)
        while at >= 0 and text[text.rfind("\n", 0, at) + 1:at].strip():  # not at a line's start: look on
            at = text.find(first, at + 1)
        if at >= 0:
            starts.append((text.rfind("\n", 0, at) + 1, y0))
            cursor = at + len(first)
    return starts


# ---------------------------------------------------------------------------------------------- image files
class ImageFile:
    """An image file's pages (a TIFF may hold several) as BGR arrays, decoded one at a time and each shrunk to
    at most MAX_OCR_PIXELS. Sizes are checked from the header, before any pixel is decoded; whatever cannot be
    read raises ``OcrError`` with the reason.

    ``with ImageFile(path, limits) as image: for page in image: ...``; ``len(image)`` is its page count."""

    def __init__(self, path: Path, limits: LimitSettings):
        from PIL import Image, UnidentifiedImageError

        self.path, self.limits = Path(path), limits
        self.format = IMAGE_SUFFIXES[self.path.suffix.lower()]
        try:
            with warnings.catch_warnings():  # Pillow warns from 89 megapixels on; our own limit is checked below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(self.path)
        except UnidentifiedImageError:
            raise OcrError(f"not a {self.format} image, or a damaged one: its content cannot be identified") from None
        except Image.DecompressionBombError as exc:  # Pillow's own ceiling, above ours unless it was raised
            raise OcrError(f"{exc} (setting limits.max_image_megapixels cannot go past it)") from None
        except OSError as exc:
            raise OcrError(f"cannot read the image: {exc}") from None
        try:
            self.frames = getattr(self.image, "n_frames", 1)
        except (OSError, ValueError, EOFError) as exc:
            self.image.close()
            raise OcrError(f"damaged {self.format} image: its pages cannot be counted ({exc})") from None
        if self.frames > limits.max_pages:
            self.image.close()
            raise OcrError(f"{self.frames:,} pages, over the limit of {limits.max_pages:,} (setting limits.max_pages)")

    def __len__(self) -> int:
        return self.frames

    def __enter__(self) -> "ImageFile":
        return self

    def __exit__(self, *_exc) -> None:
        self.image.close()

    def __iter__(self):
        from PIL import Image

        for index in range(self.frames):
            where = f"page {index + 1}" if self.frames > 1 else "the image"
            try:
                self.image.seek(index)
                yield _decode(self.image, self.limits, where)
            except Image.DecompressionBombError as exc:
                raise OcrError(f"{where}: {exc}") from None
            except (OSError, ValueError, SyntaxError, EOFError) as exc:  # what Pillow raises for damaged data
                raise OcrError(f"damaged {self.format} image: {where} cannot be decoded ({exc}); the file is "
                               f"truncated or corrupt") from None


def _decode(image, limits: LimitSettings, where: str) -> np.ndarray:
    from PIL import Image, ImageOps

    width, height = image.size
    megapixels = width * height / 1e6
    if megapixels > limits.max_image_megapixels:
        raise OcrError(f"{where} is {width:,} x {height:,} pixels ({megapixels:,.0f} megapixels), over the limit "
                       f"of {limits.max_image_megapixels:,} (setting limits.max_image_megapixels): scan at a lower "
                       f"resolution, or raise the limit")
    if width * height > MAX_OCR_PIXELS:
        # A JPEG decodes at 1/2, 1/4 or 1/8 of its size directly, in that much less memory and time.
        shrink = (MAX_OCR_PIXELS / (width * height)) ** 0.5
        image.draft("RGB", (int(width * shrink), int(height * shrink)))
    image.load()
    image = ImageOps.exif_transpose(image)  # a photo stored sideways, with the turn noted in its EXIF
    # To 8-bit grey or RGB before shrinking, and to RGB only after: a big grey scan is never held as RGB.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greys: to 8 bits, not clipped to white
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    elif "A" in image.getbands() or "transparency" in image.info:  # transparent means white, as viewers show it
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    elif image.mode not in ("L", "RGB"):  # 1-bit fax scans, palettes, CMYK
        image = image.convert("L" if image.mode == "1" else "RGB")
    if image.width * image.height > MAX_OCR_PIXELS:
        shrink = (MAX_OCR_PIXELS / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * shrink)), max(1, int(image.height * shrink)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])


__all__ = ["IMAGE_SUFFIXES", "RENDER_DPI", "MAX_OCR_PIXELS", "LOW_CONFIDENCE_MARK", "MIN_CONFIDENCE", "OcrError",
           "OcrProgress", "PageReader", "Segment", "ImageFile", "lines_text", "needs_ocr", "ocr_pdf_page",
           "ocr_pdf_regions", "reading_order", "recognise", "render_page", "scanned_regions", "CACHE_REFS",
           "prune_cache", "write_cache_refs"]
