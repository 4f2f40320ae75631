"""Chinese-aware splitting of a cleaned document into chunks that know their pages and heading path.

How a chunk is made:

- The document is cut into sections at its headings (the PDF outline, Markdown ``#`` lines, HTML h1-h6, or
  else lines like ``第二章 政府采购当事人``). A chunk never spans two sections, so its heading path is exact.
  A heading line stays with the text that follows it; a heading with no text of its own (a chapter heading
  followed at once by its first section) joins the next section's first chunk.
- Within a section, text is cut into sentences (ends ``。！？；`` and ``. ! ?`` before a space) and sentences
  are packed up to ``chunk_size`` characters. In regulations each article (``第X条`` at a line start) is a
  chunk of its own: packed three to a chunk, a short article's words were outweighed by its neighbours' and
  the regulation questions' hit@1 fell (``python -m retrieval.eval`` on ../shared/eval). A
  paragraph that runs over the size limit is cut between sentences, and the next chunk repeats up to
  ``chunk_overlap`` characters of whole sentences.
  Only a sentence longer than a chunk is cut inside (after ，、：; or, failing that, anywhere).
- Chunks may run across page breaks; ``page_start``/``page_end`` are the pages of the first and last
  character of the chunk's text, found from the cleaned document's page offsets.
- The heading path starts with the document title (unless the outline already does), e.g.
  ``中华人民共和国政府采购法 > 第二章 政府采购当事人``, so the law's name is searchable in every chunk.

>>> from ingest.clean import clean_pages
>>> from ingest.parse import Page, Heading
>>> doc = clean_pages("办法", [Page(1, "第一章 总则\\n第一条 甲。\\n第二条 乙。"), Page(2, "第二章 附则\\n第三条 丙。")],
...                   [Heading(1, "第一章 总则", 1), Heading(1, "第二章 附则", 2)], typeset=False)
>>> [(c.heading, c.text, c.page_start, c.page_end) for c in split_document(doc, chunk_size=300, chunk_overlap=50)]
[('办法 > 第一章 总则', '第一章 总则\\n第一条 甲。', 1, 1), ('办法 > 第一章 总则', '第二条 乙。', 1, 1), ('办法 > 第二章 附则', '第二章 附则\\n第三条 丙。', 2, 2)]
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from ingest.clean import CleanDocument, normalize_chars
from kbcore.text import HEADING_SEPARATOR, NUMERALS


_NUMERALS = NUMERALS + "0-9"
_ARTICLE = re.compile(rf"第[{_NUMERALS}]+条")
_STRUCTURAL_HEADING = re.compile(rf"^第[{_NUMERALS}]+([编章节])\s*[^。，；：！？]{{0,40}}$")
_STRUCTURAL_LEVEL = {"编": 1, "章": 2, "节": 3}
# A bare section number or "Chapter N" line printed just above its heading title (as in DocBook PDFs).
_NUMBER_LINE = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[A-Z](?:\.\d+)*|chapter\s+\d+|第\s*\d+\s*章|附录\s*[A-Z])$",
                          re.IGNORECASE)
# Runs of dots match from their first dot only (and possessively): started at every dot of a long run, the
# search was quadratic in the run's length (tests/ingest/test_bounded.py; timings in bench/README.md).
_SENTENCE_END = re.compile(r"[。！？；!?]+[”’」』）)\]】]*|(?<!\.)\.++[”’」』）)\]】]*+(?=\s)|…{1,2}[”’」』）)】]*")
_SOFT_BREAK = re.compile(r"[，、：,:]")


@dataclass(frozen=True)
class TextChunk:
    ordinal: int
    text: str
    page_start: int
    page_end: int
    heading: str
    # Offsets of the text in the cleaned document (for tests and debugging).
    start: int
    end: int


@dataclass(frozen=True)
class _Section:
    start: int
    end: int
    path: tuple[str, ...]
    body_start: int  # where the text after the heading line begins


def _squeeze(text: str) -> tuple[str, list[int]]:
    """Text without whitespace, and for each of its characters the offset in the original."""
    kept = [(i, ch) for i, ch in enumerate(normalize_chars(text)) if not ch.isspace()]
    return "".join(ch for _, ch in kept), [i for i, _ in kept]


def _line_bounds(text: str, offset: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return start, len(text) if end < 0 else end


def locate_headings(doc: CleanDocument) -> list[tuple[int, int, int, str]]:
    """Headings found in the text as (line start, end of heading line, level, title), in text order.

    Outline entries are looked up on their page (or the next one), after the previous heading; entries not
    found in the text are dropped. Without an outline, structural lines (第X编/章/节) are the headings."""
    text = doc.text
    if not doc.headings:
        found = []
        for match in re.finditer(r"[^\n]+", text):
            line = match.group().strip()
            m = _STRUCTURAL_HEADING.match(line)
            if m and not _ARTICLE.match(line):
                found.append((match.start(), match.end(), _STRUCTURAL_LEVEL[m.group(1)], line))
        return found
    squeezed, origin = _squeeze(text)
    page_bounds = dict(zip(doc.page_numbers, doc.page_starts))
    found, cursor = [], 0
    for heading in doc.headings:
        target, _ = _squeeze(heading.title)
        if not target:
            continue
        page_start = page_bounds.get(heading.page, 0)
        after = bisect.bisect_right(doc.page_numbers, heading.page + 1)  # page numbers ascend
        page_end = doc.page_starts[after] if after < len(doc.page_starts) else len(text)
        lo = bisect.bisect_left(origin, max(cursor, page_start))
        hi = bisect.bisect_left(origin, page_end)
        k = squeezed.find(target, lo, hi + len(target))
        if k < 0:
            continue
        line_start, _ = _line_bounds(text, origin[k])
        _, line_end = _line_bounds(text, origin[k + len(target) - 1])
        if line_start > 0:  # a bare "2.3" or "Chapter 1" line above the title belongs to the heading
            prev_start, prev_end = _line_bounds(text, line_start - 1)
            if _NUMBER_LINE.match(text[prev_start:prev_end].strip()) and prev_start >= cursor:
                line_start = prev_start
        found.append((line_start, line_end, heading.level, heading.title.strip()))
        cursor = line_end
    return found


def _sections(doc: CleanDocument) -> list[_Section]:
    headings = locate_headings(doc)
    title_key = _squeeze(doc.title)[0]
    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []
    first = headings[0][0] if headings else len(doc.text)
    if doc.text[:first].strip():
        # A lone line before the first heading (the title, "目录") joins what follows instead of being a chunk.
        lone_line = "\n" not in doc.text[:first].strip() and headings
        sections.append(_Section(0, first, (), first if lone_line else 0))
    for i, (start, line_end, level, title) in enumerate(headings):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        end = headings[i + 1][0] if i + 1 < len(headings) else len(doc.text)
        path = tuple(t for _, t in stack)
        sections.append(_Section(start, end, path, min(line_end, end)))
    prefixed = []
    for s in sections:
        path = s.path
        if doc.title and (not path or _squeeze(path[0])[0] != title_key):
            path = (doc.title, *path)
        prefixed.append(_Section(s.start, s.end, path, s.body_start))
    return prefixed


def _sentences(text: str, start: int, end: int, limit: int) -> list[tuple[int, int, bool]]:
    """(start, end, starts_a_line) of each sentence in text[start:end]; sentences over ``limit`` are cut."""
    out = []
    for line in re.finditer(r"[^\n]+", text[start:end]):
        line_start, line_end = start + line.start(), start + line.end()
        cuts = [line_start + m.end() for m in _SENTENCE_END.finditer(line.group())]
        bounds = [line_start] + [c for c in cuts if line_start < c < line_end] + [line_end]
        for a, b in zip(bounds, bounds[1:]):
            for piece_start, piece_end in _cut_long(text, a, b, limit):
                out.append((piece_start, piece_end, piece_start == line_start))
    return out


def _cut_long(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    pieces = []
    while end - start > limit:
        window = text[start:start + limit]
        soft = [m.end() for m in _SOFT_BREAK.finditer(window) if m.end() > limit // 3]
        cut = start + (soft[-1] if soft else limit)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


class ChineseTextSplitter:
    """Packs sentences of each section into chunks of at most ``chunk_size`` characters (see module doc)."""

    def __init__(self, chunk_size: int = 300, chunk_overlap: int = 50):
        if chunk_size <= 0 or not 0 <= chunk_overlap < chunk_size:
            raise ValueError(f"need chunk_size > 0 and 0 <= chunk_overlap < chunk_size, "
                             f"got {chunk_size} and {chunk_overlap}")
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap

    def split(self, doc: CleanDocument) -> list[TextChunk]:
        spans: list[tuple[int, int, tuple[str, ...]]] = []
        carried: int | None = None  # start of heading lines that had no text of their own
        carried_depth, listing = 0, False
        sections = _sections(doc)
        for section in sections:
            if not doc.text[section.body_start:section.end].strip():
                if carried is None:
                    carried, listing = section.start, False
                else:
                    # A sibling after an empty heading: a list of headings (a contents page), not a parent.
                    listing = listing or len(section.path) <= carried_depth
                carried_depth = len(section.path)
                continue
            start = section.start
            if carried is not None and listing:
                # The contents stand alone, so no chapter's text shares a chunk (and its penalty) with them.
                top = section.path[:1] if doc.title else ()
                spans.extend((a, b, top) for a, b in self._pack(doc.text, carried, carried, section.start))
            elif carried is not None:
                start = carried
            carried = None
            spans.extend((a, b, section.path) for a, b in self._pack(doc.text, start, section.body_start, section.end))
        if carried is not None and doc.text[carried:].strip():
            spans.append((carried, len(doc.text), sections[-1].path))
        chunks = []
        for a, b, path in spans:
            raw = doc.text[a:b]
            a += len(raw) - len(raw.lstrip())
            b -= len(raw) - len(raw.rstrip())
            if b <= a:
                continue
            page_start, page_end = doc.page_span(a, b)
            chunks.append(TextChunk(len(chunks), doc.text[a:b], page_start, page_end,
                                    HEADING_SEPARATOR.join(path), a, b))
        return chunks

    def _pack(self, text: str, start: int, body_start: int, end: int) -> list[tuple[int, int]]:
        size, overlap = self.chunk_size, self.chunk_overlap
        sentences = _sentences(text, start, end, size)
        article_ends = self._article_ends(text, sentences)
        out: list[tuple[int, int]] = []
        current: list[int] = []  # indices into sentences
        for i, (s_start, s_end, starts_line) in enumerate(sentences):
            if current:
                chunk_start = sentences[current[0]][0]
                has_body = sentences[current[-1]][1] > body_start
                if i in article_ends and has_body:
                    # One article per chunk: an article's words then count for it alone (see module doc).
                    out.append((chunk_start, sentences[current[-1]][1]))
                    current = []
                elif s_end - chunk_start > size and has_body:
                    out.append((chunk_start, sentences[current[-1]][1]))
                    current = [] if starts_line else self._overlap_tail(sentences, current, s_end, overlap, size)
            current.append(i)
        if current:
            out.append((sentences[current[0]][0], sentences[current[-1]][1]))
        return out

    @staticmethod
    def _article_ends(text: str, sentences: list[tuple[int, int, bool]]) -> dict[int, int]:
        """For each sentence that starts an article (第X条 at a line start): where that article ends."""
        starts = [i for i, (a, _b, line) in enumerate(sentences) if line and _ARTICLE.match(text, a)]
        ends = {}
        for n, i in enumerate(starts):
            last = (starts[n + 1] if n + 1 < len(starts) else len(sentences)) - 1
            ends[i] = sentences[last][1]
        return ends

    @staticmethod
    def _overlap_tail(sentences, current: list[int], next_end: int, overlap: int, size: int) -> list[int]:
        """The last whole sentences of the chunk just closed that fit in ``overlap`` characters (never all),
        and still leave room for the next sentence."""
        tail: list[int] = []
        for j in reversed(current[1:]):
            if sentences[current[-1]][1] - sentences[j][0] > overlap or next_end - sentences[j][0] > size:
                break
            tail.insert(0, j)
        return tail


def split_document(doc: CleanDocument, chunk_size: int = 300, chunk_overlap: int = 50) -> list[TextChunk]:
    return ChineseTextSplitter(chunk_size, chunk_overlap).split(doc)
