"""What ingest tests assert about a knowledge base after a run, however it ended."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kbcore.store import KnowledgeBase


def assert_consistent(kb_path: Path, *, on_disk: bool = False) -> None:
    """Documents, chunks, stored vectors and the FAISS index the store searches agree; with ``on_disk`` the
    ``vectors.faiss`` file as the last writer left it agrees too."""
    import faiss

    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        assert sum(d.chunks for d in kb.documents()) == kb.chunk_count()
        ids, vectors = kb.vectors()
        assert len(ids) == kb.chunk_count() and np.isfinite(vectors).all()
        if on_disk:
            stored = kb._index._read(kb, kb._vectors_epoch())  # not caught up by this reader
            assert stored is not None and np.array_equal(np.sort(faiss.vector_to_array(stored.id_map)), ids)
        held = faiss.vector_to_array(kb._vector_index().index.id_map)
        assert np.array_equal(np.sort(held), ids)
    finally:
        kb.close()
