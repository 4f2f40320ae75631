"""BM25 over jieba search tokens, kept as term counts that writes append to and deletes mask.

What a chunk contributes independently of the rest of the corpus, its term frequencies and its length, is stored;
what depends on the corpus, each term's idf (from its document frequency over the live chunks) and the average
live length, is computed at query time for the query's terms only. So a write touches only its own chunks:

- The index is a list of immutable *segments*. A segment is a sparse CSC matrix of term counts (rows: chunks,
  columns: the shared vocabulary as it was when the segment was written; uint8 counts where they fit), its rows'
  chunk ids and lengths, and a live mask.
- Adding chunks tokenises them in blocks of ``BLOCK_ROWS`` into numpy arrays (no Python list of every
  (chunk, term) pair), makes them one segment and appends it; while the segment before the last is at most
  ``MERGE_RATIO`` times the last one's size, the two are merged, so there are O(log n) segments and a row is
  rewritten O(log n) times. A full build is the same add on an empty index: its peak is about twice the final
  counts (the blocks and their merged copy) besides the token strings.
- Deleting chunks clears their live bits and takes their lengths off the live total; a segment more than
  ``MAX_DEAD`` deleted is rewritten without those rows (its columns' postings copied, nothing recomputed).
- A query takes its terms' columns from each segment and keeps the live postings. A term's document frequency
  is the number of its live postings (in a segment without deleted rows, the column's length), so there is no
  per-term table to keep in step with deletes, and a term only deleted chunks held is simply absent.
  Then ``idf = ln(1 + (n - df + 0.5) / (df + 0.5))`` and each posting adds
  ``qtf * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))``, n and avglen over the live chunks.

An update returns a new index that shares the unchanged segments (``updated``): a search running meanwhile keeps
a consistent index. Chunk ids must not repeat; the knowledge base never reuses one.

>>> index = BM25Index.build([1, 2, 3], ["政府 采购 供应商", "招标 投标 评标", "软件包 安装"])
>>> [cid for cid, _ in index.search(["招标"], k=2)]
[2]
>>> index = index.updated([4], ["招标 公告"], removed_ids=[2])
>>> [cid for cid, _ in index.search(["招标"], k=2)], "评标" in index, "公告" in index
([4], False, True)
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse

# Chunks tokenised into one block: only a block's (chunk, term) pairs are ever held as Python objects.
BLOCK_ROWS = 20_000
# The last two segments merge while the older one holds at most this many times the newer one's rows.
MERGE_RATIO = 2
# A segment is rewritten without its deleted rows once more than this share of its rows is deleted.
MAX_DEAD = 0.25
# Postings copied per step when segments merge (bounds the temporary arrays).
MERGE_STEP = 1 << 22


@dataclass(frozen=True)
class _Segment:
    ids: np.ndarray  # int64 chunk id per row
    lengths: np.ndarray  # int32 tokens per row
    counts: sparse.csc_matrix  # rows x terms (the vocabulary when written): term frequencies
    live: np.ndarray  # bool per row; replaced, never changed in place
    dead: int

    @property
    def live_rows(self) -> int:
        return len(self.ids) - self.dead

    def postings(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in ``cols``, row, term frequency) of the live postings of these columns."""
        where = np.flatnonzero(cols < self.counts.shape[1])
        if not len(where):
            return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.float64)
        sub = self.counts[:, cols[where]]
        term = np.repeat(where, np.diff(sub.indptr))
        rows, tf = sub.indices, sub.data.astype(np.float64)
        if self.dead:
            keep = self.live[rows]
            term, rows, tf = term[keep], rows[keep], tf[keep]
        return term, rows, tf

    def holds(self, col: int) -> bool:
        """Whether a live row has a posting in column ``col``."""
        if col >= self.counts.shape[1]:
            return False
        start, end = self.counts.indptr[col], self.counts.indptr[col + 1]
        return end > start and (not self.dead or bool(self.live[self.counts.indices[start:end]].any()))

    def without(self, ids: np.ndarray) -> "_Segment":
        gone = self.live & np.isin(self.ids, ids)
        found = int(np.count_nonzero(gone))
        if not found:
            return self
        return _Segment(self.ids, self.lengths, self.counts, self.live & ~gone, self.dead + found)


def _count_dtype(largest: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.int32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _block(ids: np.ndarray, token_strings: Sequence[str], vocabulary: dict[str, int]) -> _Segment:
    """One segment of these chunks; new terms join ``vocabulary``."""
    n = len(token_strings)
    lengths = np.empty(n, np.int32)
    terms_per_row = np.empty(n, np.int64)
    cols, tfs = array("q"), array("q")
    setdefault = vocabulary.setdefault
    for row, tokens in enumerate(token_strings):
        terms = tokens.split()
        counts = Counter(terms)
        lengths[row] = len(terms)
        terms_per_row[row] = len(counts)
        cols.extend([setdefault(t, len(vocabulary)) for t in counts])
        tfs.extend(counts.values())
    tf = np.frombuffer(tfs, dtype=np.int64) if len(tfs) else np.empty(0, np.int64)
    col = np.frombuffer(cols, dtype=np.int64) if len(cols) else np.empty(0, np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), terms_per_row)
    dtype = _count_dtype(int(tf.max()) if len(tf) else 0)
    counts = sparse.csc_matrix((tf.astype(dtype), (rows, col)), shape=(n, len(vocabulary)), dtype=dtype)
    return _Segment(np.asarray(ids, dtype=np.int64), lengths, counts, np.ones(n, dtype=bool), 0)


def _column_ranges(indptr: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Consecutive column ranges of about ``step`` postings each (one column is never split)."""
    n = len(indptr) - 1
    cuts = np.searchsorted(indptr, np.arange(step, int(indptr[-1]), step))
    bounds = np.unique(np.concatenate(([0], cuts, [n])))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _merge(segments: Sequence[_Segment], n_terms: int, step: int = MERGE_STEP) -> _Segment:
    """The live rows of these segments, in order, as one segment ``n_terms`` wide. Postings are copied a column
    range at a time, so besides the result only O(step) temporary memory is used."""
    segments = [s for s in segments if s.live_rows]
    # Live postings per column of each segment.
    per_segment = []
    total = np.zeros(n_terms, np.int64)
    for s in segments:
        indptr = s.counts.indptr
        width = s.counts.shape[1]
        if not s.dead:
            counted = np.diff(indptr).astype(np.int64)
        else:
            counted = np.zeros(width, np.int64)
            for c0, c1 in _column_ranges(indptr, step):
                keep = s.live[s.counts.indices[indptr[c0]:indptr[c1]]]
                col = np.repeat(np.arange(c1 - c0), np.diff(indptr[c0:c1 + 1]))
                counted[c0:c1] = np.bincount(col[keep], minlength=c1 - c0)
        per_segment.append(counted)
        total[:width] += counted
    rows = sum(s.live_rows for s in segments)
    nnz = int(total.sum())
    index_dtype = np.int32 if max(nnz, rows, n_terms) < 2**31 - 1 else np.int64
    indptr_out = np.zeros(n_terms + 1, np.int64)
    np.cumsum(total, out=indptr_out[1:])
    del total
    data_dtype = np.result_type(*[s.counts.dtype for s in segments]) if segments else np.uint8
    indices = np.empty(nnz, index_dtype)
    data = np.empty(nnz, data_dtype)
    cursor = indptr_out[:-1].copy()  # where each column's next posting goes
    offset = 0
    for s, counted in zip(segments, per_segment):
        indptr, width = s.counts.indptr, s.counts.shape[1]
        renumbered = np.cumsum(s.live) - 1 if s.dead else None
        for c0, c1 in _column_ranges(indptr, step):
            p0, p1 = int(indptr[c0]), int(indptr[c1])
            sizes = np.diff(indptr[c0:c1 + 1])
            rows_in, tf = s.counts.indices[p0:p1], s.counts.data[p0:p1]
            if renumbered is None:
                # A column's postings keep their order: posting p of column c goes to cursor[c] + p - indptr[c].
                at = np.repeat(cursor[c0:c1] - indptr[c0:c1], sizes) + np.arange(p0, p1)
                indices[at] = rows_in + offset
                data[at] = tf
            else:
                keep = s.live[rows_in]
                kept_before = np.zeros(p1 - p0 + 1, np.int64)
                np.cumsum(keep, out=kept_before[1:])
                rank = kept_before[:-1] - np.repeat(kept_before[indptr[c0:c1] - p0], sizes)
                at = (np.repeat(cursor[c0:c1], sizes) + rank)[keep]
                indices[at] = renumbered[rows_in[keep]] + offset
                data[at] = tf[keep]
        cursor[:width] += counted
        offset += s.live_rows
    counts = sparse.csc_matrix((data, indices, indptr_out.astype(index_dtype)), shape=(rows, n_terms))
    counts.has_sorted_indices = True
    ids = np.concatenate([s.ids[s.live] for s in segments] or [np.empty(0, np.int64)])
    lengths = np.concatenate([s.lengths[s.live] for s in segments] or [np.empty(0, np.int32)])
    return _Segment(ids, lengths, counts, np.ones(rows, dtype=bool), 0)


class BM25Index:
    """BM25 (``k1``, ``b``) over chunks' space-separated search tokens; see the module docstring."""

    def __init__(self, *, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.vocabulary: dict[str, int] = {}  # term -> column, shared by the indexes ``updated`` derives
        self._segments: list[_Segment] = []
        self._rows = 0  # live chunks
        self._length = 0  # their tokens, in all
        self._chunk_ids: np.ndarray | None = None

    @classmethod
    def build(cls, chunk_ids: Sequence[int], token_strings: Sequence[str], *, k1: float = 1.2, b: float = 0.75
              ) -> "BM25Index":
        return cls(k1=k1, b=b).updated(chunk_ids, token_strings)

    def updated(self, added_ids: Sequence[int] = (), added_tokens: Sequence[str] = (),
                removed_ids: Sequence[int] = ()) -> "BM25Index":
        """A new index: this one without ``removed_ids`` and with the chunks ``added_ids`` (new ids) holding
        ``added_tokens``. This one is left as it was; the two share their unchanged segments."""
        if len(added_ids) != len(added_tokens):
            raise ValueError(f"{len(added_ids)} chunk ids for {len(added_tokens)} token strings")
        new = BM25Index(k1=self.k1, b=self.b)
        new.vocabulary = self.vocabulary
        new._segments, new._rows, new._length = list(self._segments), self._rows, self._length
        removed = np.asarray(removed_ids, dtype=np.int64)
        if len(removed):
            new._remove(removed)
        if len(added_ids):
            new._add(np.asarray(added_ids, dtype=np.int64), added_tokens)
        return new

    def _remove(self, ids: np.ndarray) -> None:
        segments = []
        for s in self._segments:
            smaller = s.without(ids)
            if smaller is not s:
                self._rows -= s.live_rows - smaller.live_rows
                self._length -= int(s.lengths[s.live & ~smaller.live].sum())
                if smaller.dead > MAX_DEAD * len(smaller.ids):
                    smaller = _merge([smaller], len(self.vocabulary)) if smaller.live_rows else None
            if smaller is not None:
                segments.append(smaller)
        self._segments = segments

    def _add(self, ids: np.ndarray, token_strings: Sequence[str]) -> None:
        blocks = [_block(ids[start:start + BLOCK_ROWS], token_strings[start:start + BLOCK_ROWS], self.vocabulary)
                  for start in range(0, len(ids), BLOCK_ROWS)]
        segment = blocks[0] if len(blocks) == 1 else _merge(blocks, len(self.vocabulary))
        del blocks
        self._rows += len(segment.ids)
        self._length += int(segment.lengths.sum())
        segments = self._segments + [segment]
        while len(segments) > 1 and segments[-2].live_rows <= MERGE_RATIO * segments[-1].live_rows:
            segments[-2:] = [_merge(segments[-2:], len(self.vocabulary))]
        self._segments = segments

    @property
    def chunk_ids(self) -> np.ndarray:
        """The live chunks' ids, in the order of ``search``'s ``allowed`` mask."""
        if self._chunk_ids is None:
            self._chunk_ids = np.concatenate([s.ids[s.live] if s.dead else s.ids for s in self._segments]
                                             or [np.empty(0, np.int64)])
        return self._chunk_ids

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def nonzeros(self) -> int:
        """Stored (chunk, term) counts, deleted rows' included until their segment is rewritten."""
        return sum(s.counts.nnz for s in self._segments)

    @property
    def nbytes(self) -> int:
        """Memory of the stored arrays (not the vocabulary)."""
        return sum(s.counts.data.nbytes + s.counts.indices.nbytes + s.counts.indptr.nbytes + s.ids.nbytes
                   + s.lengths.nbytes + s.live.nbytes for s in self._segments)

    def __len__(self) -> int:
        return self._rows

    def __contains__(self, term: str) -> bool:
        """Whether a live chunk holds ``term``."""
        col = self.vocabulary.get(term)
        return col is not None and any(s.holds(col) for s in self._segments)

    def search(self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None
               ) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) pairs with a positive score, best first. ``allowed``: a boolean mask over
        ``chunk_ids``."""
        counts = Counter(t for t in query_tokens if t in self.vocabulary)
        if not counts or k <= 0 or not self._rows:
            return []
        cols = np.fromiter((self.vocabulary[t] for t in counts), dtype=np.int64, count=len(counts))
        qtf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        segments = self._segments
        postings = [s.postings(cols) for s in segments]
        df = np.zeros(len(cols), np.float64)
        for term, _, _ in postings:
            df += np.bincount(term, minlength=len(cols))
        n = self._rows
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avg = self._length / n if self._length > 0 else 1.0
        k1, b = self.k1, self.b
        scale = qtf * idf * (k1 + 1.0)
        parts = []
        for s, (term, rows, tf) in zip(segments, postings):
            norm = k1 * (1.0 - b + b * s.lengths[rows] / avg)
            part = np.bincount(rows, weights=scale[term] * tf / (tf + norm), minlength=len(s.ids))
            parts.append(part[s.live] if s.dead else part)
        scores = np.concatenate(parts)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        positive = np.flatnonzero(scores > 0)
        if len(positive) > k:
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        ids = self.chunk_ids
        return [(int(ids[i]), float(scores[i])) for i in order]
