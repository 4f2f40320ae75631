"""Hybrid retrieval over one knowledge base: dense (FAISS) + BM25 (jieba), fused, optionally reranked.

Every returned ``Hit`` carries ``dense``, the cosine of question and chunk, even when only BM25 found it:
that is the relevance score the answer stage thresholds, because fused scores are rank-based and say nothing
about whether anything relevant was found at all.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from typing import Protocol, Sequence

import numpy as np

from kbcore.config import RetrievalSettings, Settings
from kbcore.embedding import Embedder
from kbcore.locations import sheet_and_row
from kbcore.store import KnowledgeBase
from kbcore.text import (NUMERALS, TOKENIZER_VERSION, chunk_tokens, document_opening, openings, search_tokens,
                         stored_opening_chars)
from kbcore.types import Chunk, Hit
from retrieval import fusion
from retrieval.lexical import BM25Index

# Questions longer than this are cut before tokenising: a pasted page should not cost seconds of BM25.
MAX_QUERY_CHARS = 2000
# Neighbours a short hit may take in on each side beyond context_window (RetrievalSettings.min_context_chars).
MAX_WIDENING = 3
# A table of contents repeats every heading, so it matches heading-like questions better than the page that
# answers them; such chunks keep this fraction of their score.
CONTENTS_PENALTY = 0.25

_NUMERALS = NUMERALS + r"\d"
# "heading 7", never a table row (ingest joins cells with " | ").
_PAGE_REFERENCE = re.compile(r"^(?!.*\|)\S.{0,60}?\s(\d{1,3}|[ivxlc]{1,6})\s*$", re.IGNORECASE)
# Lines a contents page is made of, once ingest has replaced dot leaders by a space:
_CONTENTS_ENTRY = re.compile(
    r"^\s*(?:\d+(?:\.\d+)*\.?|[ivxlc]+|[A-Z](?:\.\d+)*|appendix\s+[A-Z])\s*$"  # a bare section or page number
    rf"|^\s*(?:第[{_NUMERALS}]+[章节篇部编]|\d+(?:\.\d+)+\.?|chapter\s+\d+|附[录件])[^。，；！？,;!?]{{0,30}}$"  # heading only
    r"|^\s*(?:目\s*录|contents|table of contents)\s*$",
    re.IGNORECASE)
# Section numbers ("1.2", "第三章"), or page numbers that never go down, tell a contents page from a numbered
# list or a column of figures.
_CONTENTS_STRUCTURE = re.compile(rf"^\s*(?:\d+\.\d+|第[{_NUMERALS}]+[章节篇部编]|chapter\s+\d+)", re.IGNORECASE)


def looks_like_contents(text: str) -> bool:
    r"""True for a chunk that is mostly a table of contents: its lines are headings, section numbers and page
    numbers, in any of the layouts PDF text extraction gives them.

    >>> looks_like_contents("目录\n第一章 总则 1\n第二章 当事人 3\n第三章 方式 7\n第四章 程序 9")
    True
    >>> looks_like_contents("2.1\nASN.1 syntax 2\n2.2\nNaming 3\n2.3\nSimple parsing 4")
    True
    >>> looks_like_contents("目录\n1 总则 2\n2 采购当事人 3\n3 采购方式 4\n4 采购程序 5")
    True
    >>> looks_like_contents("目 录\n第一章 总则\n第二章 政府采购当事人\n第三章 政府采购方式\n第四章 政府采购程序")
    True
    >>> looks_like_contents("第一条 为了规范政府采购行为，制定本法。\n第二条 在中华人民共和国境内进行的政府采购适用本法。")
    False
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 4:
        return False
    structured = sum(bool(_CONTENTS_STRUCTURE.search(line)) for line in lines)
    pages = [int(m[1]) for line in lines if (m := _PAGE_REFERENCE.search(line)) and m[1].isdigit()]
    if len(pages) >= 3 and pages == sorted(pages):
        structured += len(pages)
    entries = sum(bool(_CONTENTS_ENTRY.search(line) or _PAGE_REFERENCE.search(line)) for line in lines)
    return structured >= 2 and entries >= 0.6 * len(lines)


class Reranker(Protocol):
    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]: ...


class CrossEncoderReranker:
    """Reorders hits with a sentence-transformers cross-encoder (any id or local path the user has)."""

    def __init__(self, model: str):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model)

    def rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        if not hits:
            return hits
        scores = self.model.predict([(question, h.chunk.text) for h in hits])
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [replace(hits[i], score=float(scores[i])) for i in order]


class Retriever:
    """``search(question, k)`` returns the best chunks of a knowledge base as ``Hit``s, best first."""

    def __init__(self, kb: KnowledgeBase, embedder: Embedder, settings: RetrievalSettings,
                 reranker: Reranker | None = None):
        kb.check_embedding(embedder.model_id, embedder.dimension)
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self.reranker = reranker
        self._bm25: BM25Index | None = None
        self._bm25_generation = -1
        self._bm25_stored_tokens = False  # the index holds the stored tokens (not a re-tokenisation)
        self.lexical_tokens_read = 0  # chunks whose tokens the BM25 index was given, in all
        self._openings: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()

    def _lexical_index(self) -> BM25Index:
        """The BM25 index of the knowledge base as it is now. After a write it is brought up to date, not rebuilt:
        chunk ids only grow and a changed document gets new ones, so the chunks above the index's highest id are
        the new ones (only their tokens are read) and its ids the knowledge base lacks are the deleted ones. It is
        rebuilt when the knowledge base's tokeniser is an older one, or when the change is larger than the index."""
        with self._lock:
            generation = self.kb.generation
            if self._bm25 is not None and self._bm25_generation == generation:
                return self._bm25
            if self.kb.settings().get("tokenizer_version") not in (None, TOKENIZER_VERSION):
                # Built by an older tokeniser: re-tokenise in memory rather than mismatch query and index.
                ids, tokens = self.kb.search_tokens()
                chunks = sorted(self.kb.get_chunks(ids).values(), key=lambda c: (c.document_id, c.ordinal))
                chars = stored_opening_chars(self.kb.settings()) or 0
                retokenised = {c.id: chunk_tokens(c.heading, c.text, opening)
                               for c, opening in zip(chunks, openings(chunks, chars))}
                self.lexical_tokens_read += len(ids)
                self._bm25 = BM25Index.build(ids, [retokenised[i] for i in ids])
                self._bm25_stored_tokens = False
            else:
                self._bm25 = self._updated_index(self._bm25 if self._bm25_stored_tokens else None)
                self._bm25_stored_tokens = True
            self._bm25_generation = generation
            return self._bm25

    def _updated_index(self, index: BM25Index | None) -> BM25Index:
        known = index.chunk_ids if index is not None else np.empty(0, np.int64)
        last = int(known.max()) if len(known) else 0
        ids, added, tokens = self.kb.search_tokens_after(last)
        kept = ids[: len(ids) - len(added)]  # ids up to ``last``: writes are serialised, so all are in ``known``
        removed = known[~np.isin(known, kept, assume_unique=True)] if len(kept) < len(known) else known[:0]
        if index is None or len(added) + len(removed) > len(known):
            if last:  # the chunks the index holds are read too
                ids, added, tokens = self.kb.search_tokens_after(0)
            self.lexical_tokens_read += len(added)
            return BM25Index.build(added, tokens)
        self.lexical_tokens_read += len(added)
        return index.updated(added, tokens, removed_ids=removed)

    def _allowed_documents(self, sources: Sequence[str] | None) -> list[int] | None:
        if sources is None:
            return None
        wanted = set(sources)
        return [d.id for d in self.kb.documents() if d.source in wanted or d.source.rsplit("/", 1)[-1] in wanted]

    def search(self, question: str, k: int | None = None, *, sources: Sequence[str] | None = None,
               mode: str | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``question`` (default ``settings.top_k``), restricted to ``sources``
        (document source names) when given. An empty question or knowledge base gives an empty list."""
        k = self.settings.top_k if k is None else k
        mode = mode or self.settings.mode
        question = (question or "").strip()[:MAX_QUERY_CHARS]
        if not question or k <= 0 or self.kb.chunk_count() == 0:
            return []
        document_ids = self._allowed_documents(sources)
        if document_ids == []:
            return []
        depth = max(self.settings.candidates, k)
        query_vector = self.embedder.embed_query(question)

        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if mode in ("hybrid", "dense"):
            dense = self.kb.dense_search(query_vector, depth, document_ids)
        if mode in ("hybrid", "bm25"):
            index = self._lexical_index()
            allowed = None
            if document_ids is not None:
                allowed = np.isin(index.chunk_ids, self.kb.chunk_ids(document_ids))
            lexical = index.search(search_tokens(question), depth, allowed)

        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = lexical
        else:
            ranked = self.fuse(dense, lexical)

        keep = depth if self.reranker else k
        hits = self._to_hits(ranked[: max(keep * 2, 20)], query_vector, dict(dense), dict(lexical))
        hits = sorted((replace(h, score=h.score * CONTENTS_PENALTY) if looks_like_contents(h.chunk.text) else h
                       for h in hits), key=lambda h: -h.score)[:keep]
        if self.reranker is not None:
            hits = self.reranker.rerank(question, hits)[:k]
        hits = [replace(h, rank=i + 1, opening=self.opening(h.chunk)) for i, h in enumerate(hits)]
        return [self.widened(h) for h in hits]

    def mentions(self, term: str) -> bool:
        """Whether any chunk of the knowledge base holds ``term``'s search tokens (all of them; for ``Wi-Fi``,
        ``wifi`` or ``wi`` and ``fi`` also count). A name no chunk holds cannot be what an answer talks about."""
        index = self._lexical_index()
        tokens = search_tokens(term)
        if not tokens:  # a stop word ("the", "in"): nothing to tell
            return True
        joined = [re.sub(r"[._+-]", "", t) for t in tokens]
        parts = [p for t in tokens for p in re.split(r"[._+-]", t) if p]
        return any(all(t in index for t in forms) for forms in (tokens, joined, parts) if forms)

    def opening(self, chunk: Chunk) -> str:
        """The identity block of the chunk's document (``kbcore.text.document_opening``), "" for the chunk that
        holds it or when the knowledge base was built without them."""
        if chunk.ordinal == 0:
            return ""
        key = (self.kb.generation, chunk.document_id)
        if key not in self._openings:
            chars = stored_opening_chars(self.kb.settings()) or 0
            first = self.kb.neighbours(replace(chunk, ordinal=0), 0) if chars else []
            self._openings[key] = document_opening(first[0].text, first[0].heading, chars) if first else ""
        return self._openings[key]

    def fuse(self, dense: list[tuple[int, float]], lexical: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The dense and BM25 lists as one, by the configured fusion and weights."""
        weights = [self.settings.dense_weight, 1.0 - self.settings.dense_weight]
        if self.settings.fusion == "adaptive":
            # Fewer chunks than candidates: compare with the last one. The BM25 index (cached) holds every chunk.
            reference = max(2, min(self.settings.candidates, len(self._lexical_index()) - 1))
            share = fusion.lexical_share([s for _, s in lexical], reference, base=self.settings.lexical_base,
                                         slope=self.settings.lexical_slope)
            return fusion.weighted([dense, lexical], weights=[1.0 - share, share], from_zero=[False, True])
        if self.settings.fusion == "rrf":
            return fusion.rrf([dense, lexical], k=self.settings.rrf_k, weights=[2 * w for w in weights])
        return fusion.weighted([dense, lexical], weights=weights)

    def _to_hits(self, ranked: list[tuple[int, float]], query_vector: np.ndarray,
                 dense: dict[int, float], lexical: dict[int, float]) -> list[Hit]:
        ids = [cid for cid, _ in ranked]
        chunks = self.kb.get_chunks(ids)
        missing_dense = [cid for cid in ids if cid not in dense]
        dense = {**dense, **dict(zip(missing_dense, self.kb.dense_scores(query_vector, missing_dense).tolist()))}
        return [Hit(chunk=chunks[cid], score=score, dense=dense[cid], lexical=lexical.get(cid))
                for cid, score in ranked if cid in chunks]

    def widened(self, hit: Hit) -> Hit:
        """The hit with ``context_window`` neighbours on each side merged in, then more of its own section,
        nearest first (after, before, after, ...), while its text is shorter than ``min_context_chars``."""
        window, wanted = self.settings.context_window, self.settings.min_context_chars
        if window <= 0 and len(hit.chunk.text) >= wanted:
            return hit
        around = self.kb.neighbours(hit.chunk, window + MAX_WIDENING)
        at = next(i for i, c in enumerate(around) if c.id == hit.chunk.id)
        # Widening stays in the hit's section: a contents page or the previous chapter would only add pages
        # to its citation. It never crosses a workbook's sheets, whose rows are numbered a million apart.
        sheet = sheet_and_row(hit.chunk.page_start)[0]
        same = [i for i, c in enumerate(around) if sheet_and_row(c.page_start)[0] == sheet
                and (c.heading == hit.chunk.heading or abs(i - at) <= window)]
        first, last = at, at
        while first - 1 in same:
            first -= 1
        while last + 1 in same:
            last += 1
        around, at = around[first:last + 1], at - first
        low, high = max(0, at - window), min(len(around), at + window + 1)
        text, after = _joined(around[low:high]), True
        while len(text) < wanted and (low > 0 or high < len(around)):
            if (after and high < len(around)) or low == 0:
                high += 1
            else:
                low -= 1
            after = not after
            text = _joined(around[low:high])
        if high - low == 1:
            return hit
        return replace(hit, context=text, context_pages=(around[low].page_start, around[high - 1].page_end))


def _joined(chunks: Sequence[Chunk]) -> str:
    text = ""
    for part in chunks:
        text = _join_overlapping(text, part.text)
    return text


def _join_overlapping(left: str, right: str, longest: int = 400) -> str:
    """Append ``right`` to ``left`` without repeating the overlap the splitter put between them."""
    for size in range(min(len(left), len(right), longest), 0, -1):
        if left.endswith(right[:size]):
            return left + right[size:]
    return left + ("\n" if left else "") + right


def open_retriever(settings: Settings, kb_path=None, *, reranker: Reranker | None = None) -> Retriever:
    """Open the configured knowledge base (or ``kb_path``) with the configured embedder.

    A reranker is built from ``settings.retrieval.reranker`` when that names a model and none is passed.
    """
    from kbcore.embedding import load_embedder

    kb = KnowledgeBase(kb_path or settings.kb_path, store=settings.store)
    embedder = load_embedder(settings.embedding, settings.cache_dir)
    if reranker is None and settings.retrieval.reranker:
        reranker = CrossEncoderReranker(settings.retrieval.reranker)
    return Retriever(kb, embedder, settings.retrieval, reranker)
