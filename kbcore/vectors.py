"""The derived vector index of a knowledge base: FAISS in ``vectors.faiss`` beside ``kb.sqlite`` (exact below a
size, HNSW above it), or a Milvus collection (``kbcore.milvus``). ``kb.sqlite`` holds every vector; an index only
makes searching them fast, and is brought in line with the database whenever its generation moves.

Why an index may be caught up instead of rebuilt: chunk ids are never reused, and a chunk's vector changes only
by re-embedding, which bumps ``vectors_epoch``. So for one knowledge base (``kb_id``) and one epoch, an id names one
vector for good, and an index built at that epoch is right for every id it shares with the database: ids the
database no longer has are dropped (or, in HNSW, which cannot remove, skipped at search time until they are a
fifth of the graph, then the graph is rebuilt), ids it lacks are read from ``kb.sqlite`` and added. An index file
of another format, type, metric, dimension, knowledge base or epoch, or whose vectors differ from the stored ones
at sampled ids, is rebuilt, never trusted.

>>> import numpy as np
>>> from kbcore.config import StoreSettings
>>> FaissIndex(StoreSettings(index="auto", hnsw_threshold=1000)).wanted_kind(10, None)
'flat'
>>> FaissIndex(StoreSettings(index="auto", hnsw_threshold=1000)).wanted_kind(600, "hnsw")  # hysteresis
'hnsw'
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kbcore.config import StoreSettings

if TYPE_CHECKING:
    from kbcore.store import KnowledgeBase

INDEX_FILE = "vectors.faiss"
# First line of vectors.faiss; then "epoch N", "kb ID", then FAISS's own serialisation. Format 1 (flat only, no
# knowledge-base id) is rebuilt once.
INDEX_MAGIC = b"kbchat faiss index 2\n"
# HNSW cannot remove vectors: deleted ids are skipped at search time until they are this share of the graph.
TOMBSTONE_SHARE = 0.2
# A search restricted to this many chunks or fewer scores them exactly rather than walking the graph with a filter
# (a graph walk that may only visit a few allowed nodes can miss them).
EXACT_SUBSET = 20_000
# Stored vectors compared with the index's when an index file is loaded.
SPOT_CHECKS = 16


class VectorIndex(Protocol):
    """What ``KnowledgeBase`` asks of a derived vector index. Calls come under the knowledge base's lock."""

    kind: str

    def refresh(self, kb: "KnowledgeBase") -> None:
        """Bring the index in line with the database (called when its generation has moved)."""

    def search(self, kb: "KnowledgeBase", query: np.ndarray, k: int, allowed: np.ndarray | None,
               document_ids=None) -> list[tuple[int, float]]:
        """(chunk id, inner product), best first; ``allowed``: the only chunk ids that may be returned (the chunks
        of ``document_ids``)."""

    def changed(self, kb: "KnowledgeBase", added: np.ndarray, removed: np.ndarray, epoch_changed: bool) -> None:
        """One writer transaction has committed these changes."""

    def memory_bytes(self) -> int:
        """About how much memory the index holds in this process."""


def open_vector_index(settings: StoreSettings) -> VectorIndex:
    if settings.backend == "milvus":
        from kbcore.milvus import MilvusIndex

        return MilvusIndex(settings)
    return FaissIndex(settings)


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def index_kind(index) -> str | None:
    """"flat" or "hnsw" for an ``IndexIDMap2`` over an inner-product ``IndexFlatIP`` / ``IndexHNSWFlat``, else None."""
    import faiss

    if not isinstance(index, faiss.IndexIDMap2) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexFlatIP):
        return "flat"
    if isinstance(inner, faiss.IndexHNSWFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
        storage = faiss.downcast_index(inner.storage)
        if isinstance(storage, faiss.IndexFlat) and storage.metric_type == faiss.METRIC_INNER_PRODUCT \
                and storage.ntotal == inner.ntotal:
            return "hnsw"
    return None


class FaissIndex:
    """FAISS over the stored vectors, kept in ``vectors.faiss``: flat (exact) or HNSW, by ``StoreSettings.index``."""

    def __init__(self, settings: StoreSettings):
        self.settings = settings
        self.index = None  # faiss.IndexIDMap2 (see index_kind)
        self.epoch: str | None = None
        self.dead = np.zeros(0, dtype=np.int64)  # ids an HNSW graph holds that the database no longer has
        self._dead_batch = self._dead_selector = None

    @property
    def kind(self) -> str:
        return index_kind(self.index) or "none"

    def wanted_kind(self, n: int, current: str | None) -> str:
        """The index type for ``n`` vectors: the configured one, or for "auto" flat below the threshold and HNSW
        at or above it; an HNSW index stays until the base shrinks below half the threshold."""
        if self.settings.index != "auto":
            return self.settings.index
        threshold = self.settings.hnsw_threshold
        if current == "hnsw" and n >= threshold // 2:
            return "hnsw"
        return "hnsw" if n >= threshold else "flat"

    # ------------------------------------------------------------ keeping in line with the database
    def refresh(self, kb: "KnowledgeBase") -> None:
        import faiss

        epoch, ids = kb._vectors_epoch(), kb._live_ids()
        index, loaded = (self.index, False) if self.epoch == epoch else (None, False)
        if index is None:
            index = self._read(kb, epoch)
            loaded = index is not None
        dirty = False
        dead = np.zeros(0, dtype=np.int64)
        new = ids
        current = index_kind(index) if index is not None else None
        if index is not None and current != self.wanted_kind(len(ids), current):
            index = None
        if index is not None:
            held = faiss.vector_to_array(index.id_map).astype(np.int64)
            dead = np.setdiff1d(held, ids)
            new = np.setdiff1d(ids, held)
            if loaded and not self._matches_stored(kb, index, np.intersect1d(held, ids)):
                index = None
            elif index_kind(index) == "flat":
                if len(dead):
                    index.remove_ids(faiss.IDSelectorBatch(dead))
                    dead, dirty = dead[:0], True
            elif len(dead) > TOMBSTONE_SHARE * index.ntotal:
                index = None
        if index is None:
            index = self._new(kb.dimension, self.wanted_kind(len(ids), current))
            dead, new = dead[:0], ids
        if len(new):
            self._add(kb, index, new)
            dirty = True
        self.index, self.epoch = index, epoch
        self.dead = dead
        # IDSelectorNot holds a bare pointer to the batch selector: both are kept.
        self._dead_batch = faiss.IDSelectorBatch(dead) if len(dead) else None
        self._dead_selector = faiss.IDSelectorNot(self._dead_batch) if len(dead) else None
        faiss.omp_set_num_threads(1)  # one query runs faster on one OpenMP thread than two (bench_retrieval)
        if dirty and not kb.readonly:
            self._write(kb, index, epoch)

    def changed(self, kb, added, removed, epoch_changed) -> None:
        pass  # caught up in refresh, once per writer session

    def _new(self, dim: int, kind: str):
        import faiss

        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.settings.hnsw_ef_construction
            inner.hnsw.efSearch = self.settings.hnsw_ef_search
        else:
            inner = faiss.IndexFlatIP(dim)
        return faiss.IndexIDMap2(inner)  # faiss's wrapper keeps a reference to inner

    def _add(self, kb: "KnowledgeBase", index, ids: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(_threads())  # building uses every core; queries go back to one
        try:
            for part_ids, vecs in kb._vector_batches(ids):
                index.add_with_ids(np.ascontiguousarray(vecs), part_ids)
        finally:
            faiss.omp_set_num_threads(1)

    def _matches_stored(self, kb: "KnowledgeBase", index, shared: np.ndarray) -> bool:
        if not len(shared):
            return True
        rng = np.random.default_rng()
        sample = np.sort(rng.choice(shared, size=min(SPOT_CHECKS, len(shared)), replace=False))
        stored = kb.vectors_of(sample)
        return bool(np.allclose(index.reconstruct_batch(sample), stored, atol=1e-6))

    # ------------------------------------------------------------ the file
    def _read(self, kb: "KnowledgeBase", epoch: str):
        """``vectors.faiss`` when it is a regular file in our format, of this knowledge base and epoch, holding a
        flat or HNSW inner-product index of the right dimension; else None (it is rebuilt)."""
        import faiss

        try:
            fd = os.open(kb.path / INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None  # missing, or a link
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # a FIFO or device would block or never end
            if fh.readline() != INDEX_MAGIC or _line(fh) != f"epoch {epoch}" or _line(fh) != f"kb {kb.kb_id}":
                return None
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
            except (RuntimeError, ValueError):
                return None  # cut short or not an index
        if index_kind(index) is None or index.d != kb.dimension:
            return None
        inner = faiss.downcast_index(index.index)
        held = faiss.vector_to_array(index.id_map)
        if index.ntotal != len(held) or inner.ntotal != len(held) or len(np.unique(held)) != len(held):
            return None
        return index

    def _write(self, kb: "KnowledgeBase", index, epoch: str) -> None:
        import faiss

        tmp = kb.path / f".{INDEX_FILE}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(INDEX_MAGIC + f"epoch {epoch}\nkb {kb.kb_id}\n".encode("ascii"))
            faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        os.replace(tmp, kb.path / INDEX_FILE)

    # ------------------------------------------------------------ searching
    def search(self, kb, query: np.ndarray, k: int, allowed: np.ndarray | None, document_ids=None
               ) -> list[tuple[int, float]]:
        import faiss

        index = self.index
        live = index.ntotal - len(self.dead) if allowed is None else len(allowed)
        k = min(k, live)
        if k <= 0:
            return []
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        if index_kind(index) == "flat":
            selector = faiss.IDSelectorBatch(allowed) if allowed is not None else None
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        elif allowed is not None and len(allowed) <= EXACT_SUBSET:
            scores = index.reconstruct_batch(allowed) @ q[0]
            top = np.argsort(-scores, kind="stable")[:k]
            return [(int(allowed[i]), float(scores[i])) for i in top]
        else:
            selector = faiss.IDSelectorBatch(allowed) if allowed is not None else self._dead_selector
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.hnsw_ef_search, k))
            if selector is not None:
                params.sel = selector
        scores, ids = index.search(q, k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def memory_bytes(self) -> int:
        import faiss

        if self.index is None:
            return 0
        inner = faiss.downcast_index(self.index.index)
        n, d = self.index.ntotal, self.index.d
        size = n * d * 4 + n * 8 * 3  # vectors, the id map and its reverse map (about)
        if isinstance(inner, faiss.IndexHNSWFlat):
            size += faiss.vector_to_array(inner.hnsw.neighbors).nbytes + faiss.vector_to_array(inner.hnsw.offsets).nbytes
            size += faiss.vector_to_array(inner.hnsw.levels).nbytes
        return int(size)


def _line(fh) -> str:
    return fh.readline(200).decode("ascii", "replace").strip()
