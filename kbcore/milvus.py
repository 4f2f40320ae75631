"""The vector index of a knowledge base in a Milvus collection (``[store] backend = "milvus"``).

``uri`` is a local path (Milvus Lite runs inside this process; "" keeps it beside kb.sqlite as ``milvus.db``) or a
server's URL (``http://milvus:19530``): the same code for both. Only the vectors move: ``kb.sqlite`` keeps the
documents, chunks, text, BM25 tokens and vectors, and stays the source of truth, so the hash-driven updates, the
keyword index and a rebuild work as with the local index, and a lost or stale collection is rebuilt from it.

Milvus is kept in step with each committed write transaction (ids deleted, ids added), and records the
``(epoch, generation)`` it is in step with in a one-row state collection, written last. A collection whose state
is not the database's (a write killed half-way, another backend written meanwhile) is reconciled by comparing
id sets, by a process that holds the knowledge base's write lock; another reader meanwhile searches it as it is
and drops the ids the database no longer holds, so a deleted chunk is never returned. Re-embedding (a new epoch)
rebuilds the collection.

Milvus Lite is one process per ``milvus.db`` (it locks the folder): to ingest in one process while another serves,
run ``milvus-lite server --data-dir DIR`` (or a Milvus server) and point ``uri`` at it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from kbcore.config import StoreSettings

if TYPE_CHECKING:
    from kbcore.store import KnowledgeBase

LITE_FILE = "milvus.db"
_STATE_ID = 0
_BATCH = 5_000


class MilvusIndex:
    kind = "milvus"

    def __init__(self, settings: StoreSettings):
        self.settings = settings
        self.client = None
        self.name = ""
        self.in_step = False

    # ------------------------------------------------------------ connection and names
    def _connect(self, kb: "KnowledgeBase") -> None:
        if self.client is not None:
            return
        from pymilvus import MilvusClient

        uri = self.settings.uri or str(kb.path / LITE_FILE)
        self.client = MilvusClient(uri=uri, token=self.settings.token or "")
        ident = kb.kb_id or hashlib.sha1(str(kb.path.resolve()).encode()).hexdigest()[:16]
        self.name = f"kbchat_{ident}"
        self.state_name = f"{self.name}_state"

    def _state(self) -> tuple[str, int] | None:
        """The (epoch, generation) the collection is in step with, or None."""
        if not (self.client.has_collection(self.state_name) and self.client.has_collection(self.name)):
            return None
        rows = self.client.get(self.state_name, ids=[_STATE_ID], output_fields=["epoch", "generation"])
        return (rows[0]["epoch"], int(rows[0]["generation"])) if rows else None

    def _set_state(self, epoch: str, generation: int) -> None:
        from pymilvus import DataType

        if not self.client.has_collection(self.state_name):
            schema = self.client.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("epoch", DataType.VARCHAR, max_length=64)
            schema.add_field("generation", DataType.INT64)
            schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in a collection
            params = self.client.prepare_index_params()
            params.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
            self.client.create_collection(self.state_name, schema=schema, index_params=params,
                                          consistency_level="Strong")
        self.client.upsert(self.state_name, [{"id": _STATE_ID, "epoch": epoch, "generation": generation,
                                              "unused": [0.0, 0.0]}])

    def _create(self, dimension: int) -> None:
        from pymilvus import DataType

        for name in (self.state_name, self.name):  # the state first: no state is never "in step"
            if self.client.has_collection(name):
                self.client.drop_collection(name)
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("document_id", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        params = self.client.prepare_index_params()
        if self.settings.index == "flat":
            params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        else:
            params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                             params={"M": self.settings.hnsw_m, "efConstruction": self.settings.hnsw_ef_construction})
        self.client.create_collection(self.name, schema=schema, index_params=params, consistency_level="Strong")

    # ------------------------------------------------------------ keeping in step
    def refresh(self, kb: "KnowledgeBase") -> None:
        self._connect(kb)
        epoch, generation = kb._vectors_epoch(), kb.generation
        state = self._state()
        self.in_step = state == (epoch, generation)
        if self.in_step:
            return
        if kb._writing:
            self._reconcile(kb)
            return
        if not kb.readonly:
            from kbcore.store import KnowledgeBaseBusyError

            try:
                with kb._write_lock(wait_seconds=0.0):
                    self._reconcile(kb)
                    return
            except KnowledgeBaseBusyError:
                pass  # a writer is at work and keeps the collection in step itself
        if state is None or state[0] != epoch:
            from kbcore.store import KnowledgeBaseBusyError

            raise KnowledgeBaseBusyError(
                f"the Milvus collection of {kb.path} holds no vectors of the current embedding (epoch {epoch}) yet; "
                f"it is rebuilt by the next writer or a reader with write access")

    def _reconcile(self, kb: "KnowledgeBase") -> None:
        """Make the collection hold exactly the database's vectors, by id sets (a new epoch: from scratch)."""
        epoch, ids = kb._vectors_epoch(), kb._live_ids()
        state = self._state()
        if state is None or state[0] != epoch:
            self._create(kb.dimension)
            held = np.zeros(0, dtype=np.int64)
        else:
            held = self._held_ids()
        self._apply(kb, np.setdiff1d(ids, held), np.setdiff1d(held, ids))
        self._set_state(epoch, kb.generation)
        self.in_step = True

    def _held_ids(self) -> np.ndarray:
        iterator = self.client.query_iterator(self.name, batch_size=16_384, filter="id >= 0", output_fields=["id"])
        out = []
        try:
            while batch := iterator.next():
                out += [row["id"] for row in batch]
        finally:
            iterator.close()
        return np.unique(np.asarray(out, dtype=np.int64))

    def _apply(self, kb: "KnowledgeBase", added: np.ndarray, removed: np.ndarray) -> None:
        for start in range(0, len(removed), _BATCH):
            self.client.delete(self.name, ids=[int(i) for i in removed[start:start + _BATCH]])
        added = np.sort(added)
        for part, vecs in kb._vector_batches(added, size=_BATCH):
            documents = kb._document_ids_of(part)
            self.client.insert(self.name, [{"id": int(i), "document_id": int(d), "vector": v}
                                           for i, d, v in zip(part, documents, vecs)])
        if len(added) or len(removed):
            # Sealed into indexed segments: Milvus Lite searches unflushed rows by a scan in Python (450 ms a
            # query over 3,000 rows), and a server indexes only sealed segments too.
            self.client.flush(self.name)

    def changed(self, kb: "KnowledgeBase", added: np.ndarray, removed: np.ndarray, epoch_changed: bool) -> None:
        """After a writer's transaction: apply its changes when the collection was in step just before it,
        else reconcile."""
        self._connect(kb)
        epoch, generation = kb._vectors_epoch(), kb.generation
        if not epoch_changed and self._state() == (epoch, generation - 1):
            self._apply(kb, added, removed)
            self._set_state(epoch, generation)
            self.in_step = True
        else:
            self._reconcile(kb)

    # ------------------------------------------------------------ searching
    def search(self, kb: "KnowledgeBase", query: np.ndarray, k: int, allowed: np.ndarray | None,
               document_ids=None) -> list[tuple[int, float]]:
        self._connect(kb)
        k = min(k, 16_384)
        search_filter = ""
        if document_ids is not None:
            search_filter = f"document_id in [{', '.join(str(int(d)) for d in document_ids)}]"
        params = {"metric_type": "IP"}
        if self.settings.index != "flat":
            params["params"] = {"ef": max(self.settings.hnsw_ef_search, k)}
        result = self.client.search(self.name, data=[np.asarray(query, dtype=np.float32).tolist()],
                                    anns_field="vector", limit=k, filter=search_filter, output_fields=[],
                                    search_params=params)
        hits = [(int(h["id"]), float(h["distance"])) for h in result[0]]
        # A collection not in step (a writer at work elsewhere) may still hold deleted chunks: never return them.
        live = kb._existing_ids([i for i, _ in hits])
        return [(i, s) for i, s in hits if i in live]

    def memory_bytes(self) -> int:
        return 0  # held by the Milvus server (or Milvus Lite's threads): measured by bench/bench_scale.py
