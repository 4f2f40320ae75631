"""Ingest a folder (or uploaded files) into a knowledge base: hash -> parse -> clean -> split -> embed -> store.

A document's ``source`` key is its path relative to the ingested folder. Its content hash (sha256 of the
bytes) decides the work:

- unchanged: skipped, with no parsing, no OCR and no embedding;
- new or changed: parsed and stored in one transaction that replaces all its old chunks; chunks whose text
  and heading did not change keep their stored vectors instead of being embedded again;
- failed (bad file): reported with the reason, and the previously stored version, if any, is kept; this
  includes a file over one of ``settings.limits`` (pages, characters, chunks, headings), and anything in the
  folder that is not a regular file: links (to files or folders) are not followed, FIFOs and devices are not
  opened, so a folder cannot pull in a file from elsewhere or hang the run;
- with ``prune=True``, documents whose file is gone from the folder are deleted.

The knowledge base's write lock is held only to write. Reading, hashing, parsing, OCR, cleaning, splitting,
BM25 tokenising and embedding run without it, against what was stored when the run began (one read of the
documents, which also decides what is unchanged). The lock is taken once per batch of files ready to store (a
batch fills up to ``EMBED_SLICE`` chunks) and once at the end (documents pruned, chunk settings recorded, the
vector index caught up), each time waiting up to ``WRITE_WAIT_SECONDS`` for another writer before giving up
with ``KnowledgeBaseBusyError``. So while one file is parsed, another ingest or a delete on the same knowledge
base goes ahead; a writer that keeps the lock (``--rebuild``) still refuses the run. Writes by others during the
run follow one rule, the later write wins, whole:

- before a file is written, its stored row is read again under the lock; if another writer stored this same
  content after the run began, the file is skipped (nothing is written twice); otherwise the run's version
  replaces whatever is stored then, in one transaction. So a document deleted (or replaced) while the run was
  parsing its file is stored again, complete, as the run read the file; to keep a document out, remove its file;
- a document is pruned only if it is still the version the run saw (one stored again meanwhile is kept);
- vectors reused from the store are read again, under the lock, if the knowledge base was re-embedded meanwhile.

Each document is its own transaction, so a killed run leaves every document either in its old or its new state.
A knowledge base deleted while the run parses (its folder renamed away) stops the run at its next write, with
``KnowledgeBaseError``.

Scanned PDF pages and image files are read by OCR (``ingest.ocr``) when ``settings.ingest.ocr`` is on; its
results are also kept by the hash of each page's pixels in the knowledge base's ``ocr-cache`` folder, so a
file parsed again reads only pages it has not read before. With OCR off, image files are skipped. When a file
is stored, the cache keys its parsing used are recorded for its version (``ocr-cache/refs/<sha256>.txt``), and
the run's last write session prunes the cache (``ingest.ocr.prune_cache``): refs of versions no longer stored
and entries no live version names are deleted, so the OCR text of a deleted or replaced scan does not stay
behind. Entries from before refs were recorded go at the first prune. Documents deleted outside an ingest (the
app's or the API's delete) are pruned at the next ingest run, which also takes the lock for that when it has
nothing else to write.

The embedder is loaded only when something needs embedding (or a new knowledge base needs its model id),
so a re-run over an unchanged folder costs hashing and a database read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

from ingest.clean import clean_document
from ingest.ocr import CACHE_REFS, IMAGE_SUFFIXES, OcrProgress, PageReader, prune_cache, write_cache_refs
from ingest.parse import ParseError, check_regular_file, is_supported, parse_file
from ingest.split import ChineseTextSplitter, TextChunk
from kbcore.config import Settings
from kbcore.hashing import stream_sha256
from kbcore.store import KnowledgeBase, KnowledgeBaseWriter, NewChunk, text_hash
from kbcore.text import (PASSAGE_FORMAT, TOKENIZER_VERSION, chunk_tokens, openings, passage_text,
                         stored_opening_chars)

FileStatus = Literal["added", "updated", "skipped", "failed", "deleted"]
# model = loading the embedder; ocr = rendering, reading and ordering scanned pages (the rest of parsing is "parse")
STAGES = ("scan", "parse", "ocr", "clean", "split", "tokens", "model", "embed", "store")
# Bump when parsing, cleaning or splitting changes what is stored for the same file.
INGEST_VERSION = "2"

# progress(files_done, files_total, source, result): called with result=None when a file starts and with its
# FileResult when it is done (files_done then counts it). Deletions by prune are reported the same way.
ProgressCallback = Callable[[int, int, str, "FileResult | None"], None]
# on_embedded(n): called after each slice of n chunks is embedded (a long PDF takes a while).
EmbeddedCallback = Callable[[int], None]
EMBED_SLICE = 128
# How long each write of an ingest (and a delete) waits for another writer to finish before it is refused with
# KnowledgeBaseBusyError: writers hold the lock only to write, a batch of documents or a delete takes moments.
WRITE_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class FileResult:
    source: str
    status: FileStatus
    reason: str = ""
    pages: int = 0
    chunks: int = 0
    # Chunks that went through the embedder (the rest of a changed file's chunks reused stored vectors).
    embedded: int = 0
    seconds: float = 0.0


@dataclass
class IngestReport:
    """What one ingest did. ``seconds`` is the wall-clock time of the whole call; ``stage_seconds`` splits
    the work by stage (text stages run beside embedding in a helper thread, so they may overlap)."""

    kb_path: Path
    results: list[FileResult] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    seconds: float = 0.0
    characters: int = 0  # characters of chunk text produced by this run (added and updated files)
    ocr_pages: int = 0  # pages (or images) the OCR engine read in this run
    ocr_pages_cached: int = 0  # pages whose OCR came from the knowledge base's ocr-cache
    notes: list[str] = field(default_factory=list)  # things the user should know about the whole run

    def count(self, status: FileStatus) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failures(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def pages(self) -> int:
        """Pages of the documents this run covered (added, updated or unchanged)."""
        return sum(r.pages for r in self.results if r.status in ("added", "updated", "skipped"))

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results if r.status in ("added", "updated", "skipped"))

    @property
    def chunks_embedded(self) -> int:
        return sum(r.embedded for r in self.results)

    def summary(self) -> dict:
        """The flat summary printed by ``python -m ingest --json``."""
        return {
            "files_added": self.count("added"), "files_updated": self.count("updated"),
            "files_skipped": self.count("skipped"), "files_failed": self.count("failed"),
            "files_deleted": self.count("deleted"), "pages": self.pages, "chunks": self.chunks,
            "chunks_embedded": self.chunks_embedded, "characters": self.characters,
            "ocr_pages": self.ocr_pages, "ocr_pages_cached": self.ocr_pages_cached,
            "seconds": round(self.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "kb": str(self.kb_path),
            "failures": [{"source": r.source, "reason": r.reason} for r in self.failures],
            "notes": list(self.notes),
        }


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a regular file's bytes. Opened without following a link and without blocking, then checked
    again, so a file swapped for a link or a FIFO after it was looked at is refused rather than read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ParseError(path, "not a regular file: only regular files are ingested")
        return stream_sha256(fh)


def kb_settings_record(settings: Settings) -> dict[str, str]:
    """What a knowledge base records about how its chunks were made."""
    return {"chunk_size": str(settings.chunking.chunk_size), "chunk_overlap": str(settings.chunking.chunk_overlap),
            "tokenizer_version": TOKENIZER_VERSION, "ingest_version": INGEST_VERSION,
            "passage_text": PASSAGE_FORMAT, "opening_chars": str(settings.chunking.opening_chars)}


class _LazyEmbedder:
    """Loads the configured embedder on first use; a kb built with another model raises on that first use."""

    def __init__(self, settings: Settings, kb: KnowledgeBase | None = None):
        self.settings = settings
        self.kb = kb
        self._embedder = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def get(self):
        if self._embedder is None:
            from kbcore.embedding import load_embedder

            started = time.perf_counter()
            self._embedder = load_embedder(self.settings.embedding, self.settings.cache_dir)
            self.load_seconds = time.perf_counter() - started
            if self.kb is not None:
                self.kb.check_embedding(self._embedder.model_id, self._embedder.dimension)
        return self._embedder


def open_or_create_kb(settings: Settings, kb_path: str | os.PathLike | None = None, *,
                      embedder=None) -> KnowledgeBase:
    """Open the knowledge base at ``kb_path`` (default ``settings.kb_path``), creating it for the configured
    embedder when it does not exist. Opening does not check the embedding model (that needs the model
    loaded); ingest checks it before embedding anything, and raises ``EmbeddingMismatchError``."""
    path = Path(kb_path) if kb_path is not None else settings.kb_path
    if KnowledgeBase.exists(path):
        return KnowledgeBase(path, store=settings.store)
    if embedder is None:
        from kbcore.embedding import load_embedder

        embedder = load_embedder(settings.embedding, settings.cache_dir)
    return KnowledgeBase.create(path, embedding_model=embedder.model_id, dimension=embedder.dimension,
                                extra_settings=kb_settings_record(settings), store=settings.store)


IGNORE_FILE = ".ingestignore"
# Inside the knowledge-base folder: OCR results by the hash of the pixels read (ingest.ocr.PageReader), and in
# its refs/ folder the keys each stored document version used; pruned at the end of an ingest (ingest.ocr.prune_cache).
OCR_CACHE = "ocr-cache"


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder`` in a stable order. Hidden files and folders are left out, and so are files
    matching a pattern in ``folder/.ingestignore`` (one fnmatch pattern a line, against the relative path or
    the file name; ``#`` starts a comment), e.g. a README that describes the documents.

    Links are not followed: a link to a folder is not entered, and a link to a file is listed so that it
    fails with its reason (``parse.check_regular_file``), like FIFOs and devices."""
    ignore_file = folder / IGNORE_FILE
    patterns = []
    if ignore_file.is_file() and not ignore_file.is_symlink() and ignore_file.stat().st_size < 1 << 20:
        lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
        patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    found = []
    for root, dirs, files in os.walk(folder):
        files = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if name.startswith(".") or any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p)
                                           for p in patterns):
                continue
            found.append(path)
    return found


def _doc_id(doc) -> int | None:
    """Ids are never reused and every write of a document gives it a new one: equal ids, same stored version."""
    return doc.id if doc is not None else None


@dataclass
class _Prepared:
    """A file parsed, cleaned, split and tokenised, waiting for its vectors."""

    source: str
    digest: str
    title: str
    pages: int
    chunks: list[TextChunk]
    openings: list[str]
    tokens: list[str]
    started: float
    reason: str = ""
    ocr_keys: frozenset = frozenset()  # the OCR cache keys parsing read or wrote (recorded when stored)


class _Ingester:
    """One ingest run over a list of (source, path) pairs. It takes the write lock only to store a batch of
    prepared files, and at the end to prune and record settings (see the module docstring)."""

    def __init__(self, kb: KnowledgeBase, settings: Settings, embedder: _LazyEmbedder,
                 progress: ProgressCallback | None, on_embedded: EmbeddedCallback | None = None,
                 on_ocr: OcrProgress | None = None):
        self.kb = kb
        self.began = time.time()  # cache entries written after this may belong to another run's unstored file
        self.ocr_cache = kb.path / OCR_CACHE
        self.ocr = PageReader(settings.ingest, self.ocr_cache, on_ocr) if settings.ingest.ocr else None
        self.settings = settings
        self.embedder = embedder
        self.splitter = ChineseTextSplitter(settings.chunking.chunk_size, settings.chunking.chunk_overlap)
        self.progress = progress or (lambda *_: None)
        self.on_embedded = on_embedded or (lambda _n: None)
        self.report = IngestReport(kb.path)
        self.stored = {d.source: d for d in kb.documents()}
        # Chunks made under other chunk settings (or an older splitter or tokeniser) are redone even for
        # unchanged files; their vectors are reused wherever heading and text come out the same.
        recorded, self.wanted_settings = kb.settings(), kb_settings_record(settings)
        self.changed_settings = {k: (recorded[k], v) for k, v in self.wanted_settings.items()
                                 if k in recorded and recorded[k] != v}
        self.opening_chars = settings.chunking.opening_chars
        # A stored vector is reused only for the same heading, text and identity block as it was embedded with.
        self.stored_opening_chars = stored_opening_chars(recorded)
        if self.changed_settings:
            was = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in self.changed_settings.items())
            self.report.notes.append(f"chunking changed since this knowledge base was built ({was}): "
                                     f"every document is split again")
        self._stage_lock = threading.Lock()
        self.wrote = False  # a write session of this run committed something (the index is then caught up at the end)

    def _timed(self, stage: str, started: float) -> float:
        """Add the time since ``started`` to a stage. Stages overlap (text work runs beside embedding), so
        their sum can exceed the run's wall-clock ``seconds``."""
        now = time.perf_counter()
        with self._stage_lock:
            self.report.stage_seconds[stage] += now - started
        return now

    @contextlib.contextmanager
    def _writing(self, last: bool = False):
        """One write session; the vector index is caught up only in the run's last one."""
        with self.kb.writer(wait_seconds=WRITE_WAIT_SECONDS, catch_up_index=last) as writer:
            yield writer
            if last and self.wrote:
                writer.changed = True  # catch up what the earlier sessions wrote
        self.wrote = self.wrote or writer.changed

    def run(self, files: Sequence[tuple[str, Path]], prune_sources: Iterable[str] = ()) -> IngestReport:
        """Prepare each file (hash, parse, clean, split, tokens) one file ahead in a helper thread while the
        main thread embeds and stores the current one: the model's matrix work releases the GIL, so the
        text work mostly hides behind it. Writes stay on this thread, in file order, each batch under the lock."""
        prune_sources = list(prune_sources)
        total = len(files) + len(prune_sources)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-prepare") as pool:
            # Files waiting for vectors: small files are embedded together, a batch of one or two chunks per
            # file leaves the embedder mostly idle (bench/bench_ingest.py, many small files).
            waiting: list[tuple[int, _Prepared]] = []

            def store_waiting() -> None:
                if not waiting:
                    return
                batch = [p for _, p in waiting]
                planned = self._vectors_for(batch)  # embedding, without the lock
                started = time.perf_counter()
                with self._writing() as writer:
                    results = self._store_all(writer, batch, planned)
                self._timed("store", started)
                for (n, prepared), result in zip(waiting, results):
                    self.report.results.append(result)
                    self.progress(n + 1, total, prepared.source, result)
                waiting.clear()

            ahead = [pool.submit(self._prepare, source, path) for source, path in files[:1]]
            for done, (source, _path) in enumerate(files):
                self.progress(done, total, source, None)
                prepared = ahead[done].result()
                if done + 1 < len(files):
                    ahead.append(pool.submit(self._prepare, *files[done + 1]))
                ahead[done] = None  # let the parsed text go
                if isinstance(prepared, FileResult):
                    store_waiting()  # results stay in file order
                    self.report.results.append(prepared)
                    self.progress(done + 1, total, source, prepared)
                    continue
                waiting.append((done, prepared))
                if sum(len(p.chunks) for _, p in waiting) >= EMBED_SLICE:
                    store_waiting()
            store_waiting()
        if prune_sources or self.changed_settings or self.wrote or self._cache_stale():
            started = time.perf_counter()
            with self._writing(last=True) as writer:  # the search index is caught up when it closes
                for n, source in enumerate(prune_sources, start=len(files)):
                    self.progress(n, total, source, None)
                    result = self._prune(writer, source)
                    self.report.results.append(result)
                    self.progress(n + 1, total, source, result)
                if self.changed_settings and not self.report.failures:
                    writer.set_settings(self.wanted_settings)
                # Under the lock, so the live versions are those stored now (a concurrent ingest's refs included).
                prune_cache(self.ocr_cache, {d.content_hash for d in self.kb.documents()}, keep_after=self.began)
            self._timed("store", started)
        if self.ocr is not None:
            self.report.ocr_pages, self.report.ocr_pages_cached = self.ocr.pages, self.ocr.cached
        return self.report

    def _cache_stale(self) -> bool:
        """The OCR cache holds refs of a version not stored when the run began (deleted outside an ingest)."""
        refs = self.ocr_cache / CACHE_REFS
        if not refs.is_dir():
            return False
        live = {d.content_hash for d in self.stored.values()}
        return any(p.name.split(".")[0] not in live for p in refs.iterdir())

    def _prune(self, writer: KnowledgeBaseWriter, source: str) -> FileResult:
        """Delete a document whose file is gone, if it is still the version this run saw."""
        started = time.perf_counter()
        seen, current = self.stored[source], self.kb.document(source)
        if current is None:
            return FileResult(source, "skipped", "file no longer in the folder; already deleted by another writer",
                              seconds=time.perf_counter() - started)
        if current.id != seen.id:
            return FileResult(source, "skipped", "file no longer in the folder, but another writer stored this "
                              "document during the run; it is kept", current.pages, current.chunks,
                              seconds=time.perf_counter() - started)
        writer.delete_document(source)
        return FileResult(source, "deleted", "file no longer in the folder", seen.pages, seen.chunks,
                          seconds=time.perf_counter() - started)

    def _prepare(self, source: str, path: Path) -> "_Prepared | FileResult":
        """Everything before embedding; a FileResult when the file is done here (skipped or failed)."""
        t0 = time.perf_counter()
        if not is_supported(path) and not path.is_dir():  # a link to a folder fails below, with its reason
            return FileResult(source, "skipped", f"unsupported file type {path.suffix or '(no extension)'!r}",
                              seconds=time.perf_counter() - t0)
        if self.ocr is None and path.suffix.lower() in IMAGE_SUFFIXES:
            return FileResult(source, "skipped", "an image: reading it needs OCR, which is off (setting ingest.ocr)",
                              seconds=time.perf_counter() - t0)
        previous = self.stored.get(source)

        def failed(reason: str, pages: int = 0) -> FileResult:
            kept = " (the previously ingested version is kept)" if previous is not None else ""
            return FileResult(source, "failed", reason + kept, pages, seconds=time.perf_counter() - t0)

        try:
            check_regular_file(path)
            digest = content_hash(path)
        except ParseError as exc:
            self._timed("scan", t0)
            return failed(exc.reason)
        except OSError as exc:
            self._timed("scan", t0)
            return failed(f"cannot read the file: {exc.strerror or exc}")
        t = self._timed("scan", t0)
        if previous is not None and previous.content_hash == digest and not self.changed_settings:
            return FileResult(source, "skipped", "unchanged", previous.pages, previous.chunks,
                              seconds=time.perf_counter() - t0)
        limits = self.settings.limits
        ocr_before = self.ocr.seconds if self.ocr is not None else 0.0
        try:
            try:
                with self.ocr.tracking() if self.ocr is not None else contextlib.nullcontext(set()) as ocr_keys:
                    parsed = parse_file(path, limits, self.ocr)
            finally:
                t = self._timed("parse", t)
                self._move_ocr_time(ocr_before)
            cleaned = clean_document(parsed)
            t = self._timed("clean", t)
            chunks = self.splitter.split(cleaned)
            t = self._timed("split", t)
        except ParseError as exc:
            self._timed("parse", t)
            return failed(exc.reason)
        except Exception as exc:  # a parser bug must cost one file, not the run
            self._timed("parse", t)
            return failed(f"cannot be read: {type(exc).__name__}: {exc}")
        if not chunks:
            return failed("no text left after cleaning", parsed.page_count)
        if len(chunks) > limits.max_chunks:
            return failed(f"{len(chunks):,} chunks, over the limit of {limits.max_chunks:,} "
                          f"(setting limits.max_chunks)", parsed.page_count)
        # BM25 tokens (jieba); its dictionary loads on first use, once per process.
        chunk_openings = openings(chunks, self.opening_chars)
        tokens = [chunk_tokens(c.heading, c.text, o) for c, o in zip(chunks, chunk_openings)]
        self._timed("tokens", t)
        same_bytes = previous is not None and previous.content_hash == digest
        return _Prepared(source, digest, parsed.title, parsed.page_count, chunks,
                         chunk_openings, tokens, t0,
                         "unchanged file, split again because chunking changed" if same_bytes else "",
                         frozenset(ocr_keys))

    def _move_ocr_time(self, before: float) -> None:
        """OCR ran inside parsing; its time is its own stage."""
        if self.ocr is not None:
            with self._stage_lock:
                self.report.stage_seconds["parse"] -= self.ocr.seconds - before
                self.report.stage_seconds["ocr"] += self.ocr.seconds - before

    def _vectors_key(self) -> tuple[str, str, str]:
        """What stored vectors are valid for: re-embedding (``--rebuild``) changes it."""
        recorded = self.kb.settings()
        return (recorded.get("embedding_model", ""), recorded.get("embedding_dimension", ""),
                recorded.get("vectors_epoch", "0"))

    def _vectors_for(self, batch: list["_Prepared"]) -> tuple[tuple[str, str, str], list[tuple[np.ndarray, int]]]:
        """Each file's vectors (reused from the store where its chunks are unchanged, the rest embedded in one
        go) and how many were embedded, with the vectors key they were read under. Needs no lock."""
        t = time.perf_counter()
        key = self._vectors_key()
        plans = [self._reusable_vectors(p.source, p.chunks, p.openings) for p in batch]
        texts = [passage_text(p.chunks[i].heading, p.chunks[i].text, p.openings[i])
                 for p, (_, todo) in zip(batch, plans) for i in todo]
        embedded = self._embed(texts)
        offset = 0
        for vectors, todo in plans:
            vectors[todo] = embedded[offset:offset + len(todo)]
            offset += len(todo)
        self._timed("embed", t)
        return key, [(vectors, len(todo)) for vectors, todo in plans]

    def _store_all(self, writer: KnowledgeBaseWriter, batch: list["_Prepared"], planned) -> list[FileResult]:
        """Store each file in its own transaction (under the lock)."""
        key, vectors = planned
        if self._vectors_key() != key:  # re-embedded since: a reused vector may be of the old model; redo
            if self.embedder.loaded:
                self.kb.check_embedding(self.embedder.get().model_id, self.embedder.get().dimension)
            key, vectors = self._vectors_for(batch)
        return [self._store(writer, p, v, n) for p, (v, n) in zip(batch, vectors)]

    def _store(self, writer: KnowledgeBaseWriter, prepared: "_Prepared", vectors: np.ndarray,
               embedded: int) -> FileResult:
        current = self.kb.document(prepared.source)  # under the lock: what is stored now
        if current is not None and current.content_hash == prepared.digest \
                and _doc_id(current) != _doc_id(self.stored.get(prepared.source)):
            return FileResult(prepared.source, "skipped", "unchanged (another writer stored this version during "
                              "the run)", current.pages, current.chunks, seconds=time.perf_counter() - prepared.started)
        new_chunks = [NewChunk(c.ordinal, c.page_start, c.page_end, c.heading, c.text, tokens)
                      for c, tokens in zip(prepared.chunks, prepared.tokens)]
        if prepared.ocr_keys:  # before the document: a run killed in between leaves refs the next prune drops
            write_cache_refs(self.ocr_cache, prepared.digest, prepared.ocr_keys)
        writer.put_document(prepared.source, content_hash=prepared.digest, title=prepared.title,
                            pages=prepared.pages, chunks=new_chunks, vectors=vectors)
        self.report.characters += sum(len(c.text) for c in prepared.chunks)
        status: FileStatus = "updated" if current is not None else "added"
        return FileResult(prepared.source, status, prepared.reason, prepared.pages, len(prepared.chunks), embedded,
                          seconds=time.perf_counter() - prepared.started)

    def _reusable_vectors(self, source: str, chunks: list[TextChunk], chunk_openings: list[str]
                          ) -> tuple[np.ndarray, list[int]]:
        """The chunks' vectors where heading, text and opening are unchanged since the stored version, and
        the positions of the chunks still to embed."""
        reusable: dict[str, np.ndarray] = {}
        if source in self.stored and self.stored_opening_chars is not None:
            stored = self.kb.chunks(source)
            old = set(zip((c.heading for c in stored), (c.text for c in stored),
                          openings(stored, self.stored_opening_chars)))
            wanted = [text_hash(c.text) for c, o in zip(chunks, chunk_openings) if (c.heading, c.text, o) in old]
            reusable = self.kb.vectors_by_text_hash(wanted) if wanted else {}
        todo = [i for i, c in enumerate(chunks) if text_hash(c.text) not in reusable]
        dim = self.embedder.get().dimension if todo else self.kb.dimension
        vectors = np.empty((len(chunks), dim), dtype=np.float32)
        for i, c in enumerate(chunks):
            if text_hash(c.text) in reusable:
                vectors[i] = reusable[text_hash(c.text)]
        return vectors, todo

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.kb.dimension), dtype=np.float32)
        embedder = self.embedder.get()
        out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
        # Large slices let the embedder sort by length and pad little; slicing at all keeps progress moving.
        for start in range(0, len(texts), EMBED_SLICE):
            out[start:start + EMBED_SLICE] = embedder.embed_passages(texts[start:start + EMBED_SLICE])
            self.on_embedded(len(texts[start:start + EMBED_SLICE]))
        return out


def ingest_folder(folder: str | os.PathLike, settings: Settings, *, kb_path: str | os.PathLike | None = None,
                  prune: bool = False, progress: ProgressCallback | None = None,
                  on_embedded: EmbeddedCallback | None = None, on_ocr: OcrProgress | None = None) -> IngestReport:
    """Ingest every supported file under ``folder``; see the module docstring for what happens to each."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = [(p.relative_to(folder).as_posix(), p) for p in _walk(folder)]
    return _ingest(files, settings, kb_path, prune_missing=prune, progress=progress, on_embedded=on_embedded,
                   on_ocr=on_ocr)


def ingest_files(paths: Iterable[str | os.PathLike], settings: Settings, *, kb_path: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
                 on_embedded: EmbeddedCallback | None = None, on_ocr: OcrProgress | None = None) -> IngestReport:
    """Ingest the given files (e.g. uploads). A file's source key is its path relative to ``root``, or its
    file name when no root is given."""
    files = []
    for p in map(Path, paths):
        source = p.resolve().relative_to(Path(root).resolve()).as_posix() if root is not None else p.name
        files.append((source, p))
    return _ingest(files, settings, kb_path, prune_missing=False, progress=progress, on_embedded=on_embedded,
                   on_ocr=on_ocr)


def _ingest(files, settings: Settings, kb_path, *, prune_missing: bool, progress, on_embedded=None,
            on_ocr=None) -> IngestReport:
    began = time.perf_counter()
    path = Path(kb_path) if kb_path is not None else settings.kb_path
    embedder = _LazyEmbedder(settings)
    kb = open_or_create_kb(settings, path, embedder=None if KnowledgeBase.exists(path) else embedder.get())
    embedder.kb = kb
    try:
        ingester = _Ingester(kb, settings, embedder, progress, on_embedded, on_ocr)
        present = {source for source, _ in files}
        gone = sorted(s for s in ingester.stored if s not in present) if prune_missing else []
        loaded_before = embedder.load_seconds
        report = ingester.run(files, gone)
        report.seconds = time.perf_counter() - began
        # A model loaded on first use was timed inside "embed"; show it as its own stage.
        report.stage_seconds["embed"] -= embedder.load_seconds - loaded_before
        report.stage_seconds["model"] = embedder.load_seconds
        return report
    finally:
        kb.close()


def delete_document(kb: KnowledgeBase | str | os.PathLike, source: str) -> bool:
    """Remove one document and its chunks; False when no document has that source key."""
    own = not isinstance(kb, KnowledgeBase)
    kb = KnowledgeBase(kb) if own else kb
    try:
        with kb.writer(wait_seconds=WRITE_WAIT_SECONDS) as writer:  # an ingest holds the lock only to write
            return writer.delete_document(source)
    finally:
        if own:
            kb.close()


def rebuild(kb_path: str | os.PathLike, settings: Settings, *, batch_size: int = 64,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Re-embed every stored chunk with the configured embedder (no re-parsing) and record that model.
    Returns the number of chunks re-embedded."""
    from kbcore.embedding import load_embedder

    kb = KnowledgeBase(kb_path, store=settings.store)
    try:
        embedder = load_embedder(settings.embedding, settings.cache_dir)
        with kb.writer() as writer:
            chunks = kb.chunks()
            chunk_openings = openings(chunks, stored_opening_chars(kb.settings()) or 0)
            vectors: dict[int, np.ndarray] = {}
            if progress:
                progress(0, len(chunks))
            for start in range(0, len(chunks), batch_size):
                part = chunks[start:start + batch_size]
                embedded = embedder.embed_passages([passage_text(c.heading, c.text, o) for c, o in
                                                    zip(part, chunk_openings[start:start + batch_size])])
                vectors.update({c.id: v for c, v in zip(part, embedded)})
                if progress:
                    progress(len(vectors), len(chunks))
            writer.replace_vectors(embedder.model_id, embedder.dimension, vectors)
        return len(chunks)
    finally:
        kb.close()


__all__ = ["FileResult", "IngestReport", "FileStatus", "ProgressCallback", "EmbeddedCallback", "ingest_folder",
           "ingest_files", "delete_document", "rebuild", "open_or_create_kb", "passage_text", "content_hash",
           "STAGES"]
