"""A knowledge base is a folder: ``kb.sqlite`` (documents, chunks, vectors, settings) and a derived vector index.

SQLite is the single source of truth and every write is one transaction, so a killed ingest leaves the
previous state readable. The vector index is derived from the stored vectors (``kbcore.vectors``): by default
``vectors.faiss``, exact (flat) below ``[store] hnsw_threshold`` chunks and HNSW above it, written to a temp file
and renamed into place; or a Milvus collection (``[store] backend = "milvus"``, ``kbcore.milvus``). Chunk ids come
from ``AUTOINCREMENT`` and are never reused, and re-embedding (which keeps the ids) bumps the ``vectors_epoch``
setting in its own transaction; the index file records the epoch it was built at and the knowledge base's id. So
an index of the expected type, knowledge base and epoch holds the right vector for every id it shares with the
database: it is caught up (ids the database lost dropped or skipped, new ids added from the stored vectors), not
rebuilt, after each write. Any other index (of another type, metric, knowledge base or epoch, cut short, built by
a reader that raced a re-embedding, or whose vectors differ from the stored ones at sampled ids) is rebuilt from
the stored vectors. The store holds no pickle.

>>> import tempfile, numpy as np
>>> kb = KnowledgeBase.create(tempfile.mkdtemp(), embedding_model="demo", dimension=2)
>>> with kb.writer() as w:
...     doc_id = w.put_document("a.txt", content_hash="h1", title="A", pages=1, chunks=[
...         NewChunk(ordinal=0, page_start=1, page_end=1, heading="", text="你好", tokens="你好")],
...         vectors=np.array([[1.0, 0.0]], dtype="float32"))
>>> [d.source for d in kb.documents()]
['a.txt']
>>> kb.dense_search(np.array([1.0, 0.0], dtype="float32"), k=1)[0][1]
1.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from kbcore.config import StoreSettings
from kbcore.types import Chunk, Document
from kbcore.vectors import INDEX_FILE, open_vector_index

DB_FILE = "kb.sqlite"
LOCK_FILE = "lock"
SCHEMA_VERSION = "1"
__all__ = ["KnowledgeBase", "KnowledgeBaseWriter", "NewChunk", "KnowledgeBaseError", "EmbeddingMismatchError",
           "KnowledgeBaseBusyError", "DB_FILE", "INDEX_FILE", "text_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT UNIQUE NOT NULL,
    content_hash TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    page_start INTEGER NOT NULL,
    page_end INTEGER NOT NULL,
    heading TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    tokens TEXT NOT NULL DEFAULT '',
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id, ordinal);
CREATE INDEX IF NOT EXISTS chunks_by_text_hash ON chunks(text_hash);
"""


class KnowledgeBaseError(Exception):
    """A knowledge base cannot be opened or written; the message says why and what to do."""


class EmbeddingMismatchError(KnowledgeBaseError):
    pass


class KnowledgeBaseBusyError(KnowledgeBaseError):
    pass


@dataclass(frozen=True)
class NewChunk:
    """A chunk on its way into the store (it has no id yet)."""

    ordinal: int
    page_start: int
    page_end: int
    heading: str
    text: str
    tokens: str = ""


def _record_store(store: StoreSettings) -> str:
    """The store settings a knowledge base was last written with (never the token)."""
    return json.dumps({f.name: getattr(store, f.name) for f in dataclasses.fields(store) if f.name != "token"},
                      sort_keys=True)


def _recorded_store(value: str | None) -> StoreSettings:
    if not value:
        return StoreSettings()
    known = {f.name for f in dataclasses.fields(StoreSettings)} - {"token"}
    try:
        return StoreSettings(**{k: v for k, v in json.loads(value).items() if k in known})
    except (ValueError, TypeError):
        return StoreSettings()


def _file_identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _document_from_row(r: sqlite3.Row) -> Document:
    return Document(id=r["id"], source=r["source"], content_hash=r["content_hash"], title=r["title"],
                    pages=r["pages"], chunks=r["chunks"], updated_at=r["updated_at"])


def _chunk_from_row(row: sqlite3.Row) -> Chunk:
    return Chunk(
        id=row["id"], document_id=row["document_id"], source=row["source"], ordinal=row["ordinal"],
        page_start=row["page_start"], page_end=row["page_end"], heading=row["heading"], text=row["text"],
    )


_CHUNK_SELECT = (
    "SELECT c.id, c.document_id, d.source, c.ordinal, c.page_start, c.page_end, c.heading, c.text "
    "FROM chunks c JOIN documents d ON d.id = c.document_id"
)


class KnowledgeBase:
    """Read and write one knowledge-base folder. Safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, store: StoreSettings | None = None):
        self.path = Path(path)
        self.readonly = readonly
        self._store_given = store is not None
        db = self.path / DB_FILE
        if not db.is_file():
            raise KnowledgeBaseError(
                f"no knowledge base at {self.path} (missing {DB_FILE}); create one with `python -m ingest DOCS --kb {self.path}`"
            )
        uri = f"file:{db}?mode=ro" if readonly else f"file:{db}"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._lock = threading.RLock()
        # Opened without store settings (a delete from the app, a reader in finetune): as last written with.
        self.store_settings = store if store is not None else _recorded_store(self.settings().get("store"))
        self._index = open_vector_index(self.store_settings)
        self._index_generation = -1
        self._writing = False  # this instance holds the write lock (KnowledgeBase.writer)
        self._db_identity = _file_identity(db)  # a writer checks the folder still holds this database

    # ---------------------------------------------------------------- creation and settings
    @classmethod
    def create(cls, path: str | os.PathLike, *, embedding_model: str, dimension: int,
               extra_settings: dict[str, str] | None = None, store: StoreSettings | None = None) -> "KnowledgeBase":
        """Create an empty knowledge base (or open an existing one built with the same embedding model)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path / DB_FILE, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
            defaults = {"schema_version": SCHEMA_VERSION, "embedding_model": embedding_model,
                        "embedding_dimension": str(dimension), "generation": "0", "kb_id": uuid.uuid4().hex,
                        **(extra_settings or {})}
            db.executemany("INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", defaults.items())
        finally:
            db.close()
        kb = cls(path, store=store)
        kb.check_embedding(embedding_model, dimension)
        return kb

    @classmethod
    def exists(cls, path: str | os.PathLike) -> bool:
        return (Path(path) / DB_FILE).is_file()

    def settings(self) -> dict[str, str]:
        with self._lock:
            return {r["key"]: r["value"] for r in self._db.execute("SELECT key, value FROM settings")}

    @property
    def embedding_model(self) -> str:
        return self.settings()["embedding_model"]

    @property
    def dimension(self) -> int:
        return int(self.settings()["embedding_dimension"])

    @property
    def generation(self) -> int:
        """Increases with every committed write; caches built over the knowledge base compare it."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def check_embedding(self, model_id: str, dimension: int) -> None:
        recorded = self.settings()
        if recorded.get("embedding_model") != model_id or int(recorded.get("embedding_dimension", -1)) != dimension:
            raise EmbeddingMismatchError(
                f"knowledge base {self.path} was built with embedding model {recorded.get('embedding_model')!r} "
                f"(dimension {recorded.get('embedding_dimension')}), but the configured model is {model_id!r} "
                f"(dimension {dimension}). Re-embed it with `python -m ingest --rebuild --kb {self.path}` "
                f"(stored text is re-embedded; no re-parsing), or configure the original model."
            )

    # ---------------------------------------------------------------- reading
    def documents(self) -> list[Document]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM documents ORDER BY source").fetchall()
        return [_document_from_row(r) for r in rows]

    def document(self, source: str) -> Document | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM documents WHERE source = ?", (source,)).fetchone()
        return None if r is None else _document_from_row(r)

    def chunk_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def chunks(self, source: str | None = None) -> list[Chunk]:
        """All chunks, or those of one document, in document order."""
        sql, args = _CHUNK_SELECT, ()
        if source is not None:
            sql, args = sql + " WHERE d.source = ?", (source,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY d.source, c.ordinal", args).fetchall()
        return [_chunk_from_row(r) for r in rows]

    def get_chunks(self, ids: Iterable[int]) -> dict[int, Chunk]:
        ids = [int(i) for i in ids]
        out: dict[int, Chunk] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                marks = ",".join("?" * len(part))
                for row in self._db.execute(f"{_CHUNK_SELECT} WHERE c.id IN ({marks})", part):
                    out[row["id"]] = _chunk_from_row(row)
        return out

    def neighbours(self, chunk: Chunk, window: int) -> list[Chunk]:
        """The chunk with up to ``window`` chunks of the same document on each side, in order."""
        with self._lock:
            rows = self._db.execute(
                f"{_CHUNK_SELECT} WHERE c.document_id = ? AND c.ordinal BETWEEN ? AND ? ORDER BY c.ordinal",
                (chunk.document_id, chunk.ordinal - window, chunk.ordinal + window)).fetchall()
        return [_chunk_from_row(r) for r in rows]

    def chunk_ids(self, document_ids: Sequence[int]) -> np.ndarray:
        """Ids of the chunks of these documents."""
        with self._lock:
            marks = ",".join("?" * len(document_ids)) or "NULL"
            rows = self._db.execute(f"SELECT id FROM chunks WHERE document_id IN ({marks})", list(document_ids))
            return np.array([r[0] for r in rows], dtype=np.int64)

    def search_tokens(self) -> tuple[np.ndarray, list[str]]:
        """Chunk ids and their space-separated search tokens (for lexical retrieval)."""
        with self._lock:
            rows = self._db.execute("SELECT id, tokens FROM chunks ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def search_tokens_after(self, last_id: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every chunk id, then the ids above ``last_id`` and their search tokens, in id order, read in one
        transaction (one state of the database). Ids only grow and are never reused, so for a lexical index holding
        the chunks up to ``last_id`` these are the chunks written since, and its other ids missing here were
        deleted. The ids come from an index, the tokens by id range: neither reads the other chunks' rows."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                ids = np.fromiter((r[0] for r in self._db.execute("SELECT id FROM chunks")), dtype=np.int64)
                rows = self._db.execute("SELECT id, tokens FROM chunks WHERE id > ? ORDER BY id",
                                        (last_id,)).fetchall()
            finally:
                self._db.execute("COMMIT")
        ids.sort()
        return ids, np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ids and their stored vectors."""
        dim = self.dimension
        with self._lock:
            rows = self._db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs

    def vectors_by_text_hash(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors of chunks with these text hashes: unchanged text in a changed file is not re-embedded."""
        hashes = list(set(hashes))
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(hashes), 500):
                part = hashes[start:start + 500]
                marks = ",".join("?" * len(part))
                for h, blob in self._db.execute(
                        f"SELECT text_hash, vector FROM chunks WHERE text_hash IN ({marks})", part):
                    out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    # ---------------------------------------------------------------- dense search
    @property
    def kb_id(self) -> str:
        """A random id recorded at creation (or at the first write of an older knowledge base): an index file or
        Milvus collection names the knowledge base it was built for."""
        return self.settings().get("kb_id", "")

    def _live_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self._db.execute("SELECT id FROM chunks ORDER BY id")), dtype=np.int64)

    def _vector_batches(self, ids: np.ndarray, size: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The stored vectors of ``ids`` (sorted), ``size`` at a time: a big index is built without a second
        copy of every vector in memory."""
        for start in range(0, len(ids), size):
            part = np.asarray(ids[start:start + size], dtype=np.int64)
            yield part, self.vectors_of(part)

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these chunk ids, in that order (KeyError for an id the database lacks)."""
        ids = [int(i) for i in ids]
        dim = self.dimension
        out = np.empty((len(ids), dim), dtype=np.float32)
        where = {cid: row for row, cid in enumerate(ids)}
        found = 0
        with self._lock:
            lo, hi = (min(ids), max(ids)) if ids else (0, -1)
            if hi - lo < 4 * len(ids):  # a dense range: one scan of the primary key
                rows = self._db.execute("SELECT id, vector FROM chunks WHERE id BETWEEN ? AND ?", (lo, hi))
            else:
                rows = (r for s in range(0, len(ids), 500) for r in self._db.execute(
                    f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(ids[s:s + 500]))})",
                    ids[s:s + 500]))
            for cid, blob in rows:
                row = where.get(cid)
                if row is not None:
                    out[row] = np.frombuffer(blob, dtype=np.float32)
                    found += 1
        if found != len(where):
            raise KeyError(f"{len(where) - found} of {len(where)} chunk ids are not in {self.path}")
        return out

    def _document_ids_of(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        found: dict[int, int] = {}
        with self._lock:
            for s in range(0, len(ids), 500):
                part = ids[s:s + 500]
                found.update(self._db.execute(
                    f"SELECT id, document_id FROM chunks WHERE id IN ({','.join('?' * len(part))})", part).fetchall())
        return np.array([found[i] for i in ids], dtype=np.int64)

    def _existing_ids(self, ids: Sequence[int]) -> set[int]:
        ids = [int(i) for i in ids]
        with self._lock:
            return {r[0] for s in range(0, len(ids), 500) for r in self._db.execute(
                f"SELECT id FROM chunks WHERE id IN ({','.join('?' * len(ids[s:s + 500]))})", ids[s:s + 500])}

    def _vector_index(self):
        """The derived vector index, in line with the database (call under ``self._lock``)."""
        generation = self.generation
        if self._index_generation != generation:
            self._index.refresh(self)
            self._index_generation = generation
        return self._index

    def _vectors_epoch(self) -> str:
        row = self._db.execute("SELECT value FROM settings WHERE key='vectors_epoch'").fetchone()
        return row[0] if row else "0"

    def index_info(self) -> dict:
        """The vector index in use: backend, kind ("flat", "hnsw", or Milvus's), vectors and memory in bytes."""
        with self._lock:
            index = self._vector_index()
            return {"backend": self.store_settings.backend, "kind": index.kind, "chunks": self.chunk_count(),
                    "memory_bytes": index.memory_bytes()}

    def dense_search(self, query: np.ndarray, k: int, document_ids: Sequence[int] | None = None
                     ) -> list[tuple[int, float]]:
        """(chunk id, inner product) pairs, best first; ``document_ids`` restricts the search."""
        if k <= 0:
            return []
        with self._lock:
            allowed = None
            if document_ids is not None:
                allowed = self.chunk_ids(document_ids)
                if not len(allowed):
                    return []
            query = np.asarray(query, dtype=np.float32).reshape(-1)
            return self._vector_index().search(self, query, k, allowed, document_ids=document_ids)

    def dense_scores(self, query: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Inner products of the query with the given chunks' vectors (for candidates found lexically), from the
        stored vectors, so they are exact whatever the index."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.vectors_of(ids) @ np.asarray(query, dtype=np.float32).reshape(-1)

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def writer(self, *, wait_seconds: float = 0.0, catch_up_index: bool = True) -> Iterator["KnowledgeBaseWriter"]:
        """Exclusive write access. A second writer (another process or thread) waits up to ``wait_seconds``,
        then gets ``KnowledgeBaseBusyError``; it never interleaves with the first.

        When the session has changed something (``writer.changed``), the derived vector index is caught up as it
        closes (``vectors.faiss`` rewritten). ``catch_up_index=False`` leaves that to a later session or to the next
        search (an index behind the database is caught up, never trusted), so a run of many short sessions (an
        ingest takes the lock once per batch of files) pays for it once, in its last session."""
        if self.readonly:
            raise KnowledgeBaseError(f"knowledge base {self.path} is open read-only")
        with self._write_lock(wait_seconds), self._lock:
            try:
                same = _file_identity(self.path / DB_FILE) == self._db_identity
            except OSError:
                same = False
            if not same:  # e.g. the app deleted (renamed away) the knowledge base while this one was open
                raise KnowledgeBaseError(f"knowledge base {self.path} was deleted or replaced while it was open")
            self._writing = True
            writer = KnowledgeBaseWriter(self)
            try:
                yield writer
            finally:
                try:
                    if writer.changed and catch_up_index:
                        self._vector_index()  # catch the index up (and rewrite vectors.faiss) once for the batch
                finally:
                    self._writing = False

    @contextlib.contextmanager
    def _write_lock(self, wait_seconds: float) -> Iterator[None]:
        """The knowledge base's file lock, held by one writer (process or thread) at a time."""
        lock_path = self.path / LOCK_FILE
        try:
            fh = open(lock_path, "a+")
        except FileNotFoundError:
            raise KnowledgeBaseError(f"knowledge base {self.path} is gone (deleted or moved while it was open)") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    fh.close()
                    raise KnowledgeBaseBusyError(
                        f"knowledge base {self.path} is being written by {holder}; try again when it finishes"
                    ) from None
                time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class KnowledgeBaseWriter:
    """Obtained from ``KnowledgeBase.writer()``. Each method commits one transaction on its own."""

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb
        self.db = kb._db
        self.changed = False  # a transaction committed in this session (the index is caught up when it closes)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # What the transaction adds to and removes from the vectors, for an index kept in step per transaction.
        self._added, self._removed, self._new_epoch = [], [], False
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            self.db.execute("INSERT OR IGNORE INTO settings(key, value) VALUES ('kb_id', ?)", (uuid.uuid4().hex,))
            if self.kb._store_given:
                self.db.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('store', ?)",
                                (_record_store(self.kb.store_settings),))
            self.db.execute("COMMIT")
            self.changed = True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.kb._index.changed(self.kb, np.asarray(self._added, dtype=np.int64),
                               np.asarray(self._removed, dtype=np.int64), self._new_epoch)

    def _chunk_ids_of(self, source: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.source = ?", (source,))]

    def put_document(self, source: str, *, content_hash: str, title: str, pages: int,
                     chunks: Sequence[NewChunk], vectors: np.ndarray) -> int:
        """Add a document or replace all of an existing one's chunks, atomically. Returns its id."""
        dim = self.kb.dimension
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), dim):
            raise ValueError(f"{source}: expected {len(chunks)} vectors of dimension {dim}, got {vectors.shape}")
        with self._transaction() as db:
            self._removed += self._chunk_ids_of(source)
            db.execute("DELETE FROM documents WHERE source = ?", (source,))
            cur = db.execute(
                "INSERT INTO documents(source, content_hash, title, pages, chunks, updated_at) VALUES (?,?,?,?,?,?)",
                (source, content_hash, title, pages, len(chunks), time.time()))
            doc_id = cur.lastrowid
            db.executemany(
                "INSERT INTO chunks(document_id, ordinal, page_start, page_end, heading, text, text_hash, tokens, vector)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [(doc_id, c.ordinal, c.page_start, c.page_end, c.heading, c.text, text_hash(c.text), c.tokens,
                  vectors[i].tobytes()) for i, c in enumerate(chunks)])
            self._added += [r[0] for r in db.execute("SELECT id FROM chunks WHERE document_id = ?", (doc_id,))]
        return doc_id

    def delete_document(self, source: str) -> bool:
        with self._transaction() as db:
            self._removed += self._chunk_ids_of(source)
            deleted = db.execute("DELETE FROM documents WHERE source = ?", (source,)).rowcount
        return deleted > 0

    def set_settings(self, values: dict[str, str]) -> None:
        """Record how the knowledge base is built (chunking, tokeniser, ...), in one transaction."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                           [(k, str(v)) for k, v in values.items()])

    def replace_vectors(self, model_id: str, dimension: int, vectors_by_id: dict[int, np.ndarray]) -> None:
        """Swap every chunk's vector and the recorded embedding model in one transaction (re-embedding)."""
        # Ids stay the same, so the id-set check cannot tell old vectors from new: a new epoch in the same
        # transaction does. An index a reader builds from the old vectors meanwhile carries the old epoch.
        with self._transaction() as db:
            db.executemany("UPDATE chunks SET vector = ? WHERE id = ?",
                           [(np.asarray(v, dtype=np.float32).tobytes(), int(i)) for i, v in vectors_by_id.items()])
            epoch = int(self.kb._vectors_epoch()) + 1
            self._new_epoch = True
            db.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                           [("embedding_model", model_id), ("embedding_dimension", str(dimension)),
                            ("vectors_epoch", str(epoch))])
