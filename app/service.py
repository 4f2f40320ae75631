"""The service core the Streamlit app and the HTTP API share: the process's model and retrievers, answering,
citations as both show them, and ingest jobs. No Streamlit and no web framework here, so a behaviour fixed in
one front end is fixed in both.

Retrievers are kept per knowledge base under plain-string keys built from the settings that matter, so a
different top-k never reopens anything, while another knowledge base or embedding does. A retriever notices new
ingests and deletions by itself (the knowledge base's generation).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from app import state
from kbcore.config import Settings
from kbcore.types import Answer

MAX_RETRIEVERS = 8


def retriever_key(settings: Settings, kb_path: Path) -> str:
    # top_k is passed per question, so it is not part of what makes a retriever different.
    retrieval = dataclasses.replace(settings.retrieval, top_k=0)
    return repr((str(Path(kb_path).resolve()), settings.embedding, retrieval, str(settings.cache_dir)))


class Retrievers:
    """Open retrievers, least recently used first; beyond ``MAX_RETRIEVERS`` the oldest is let go (not closed:
    a question may still be searching it)."""

    def __init__(self, limit: int = MAX_RETRIEVERS):
        self.limit = limit
        self._open: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: Settings, kb_path: Path):
        from retrieval import open_retriever

        key = retriever_key(settings, kb_path)
        with self._lock:  # opening loads the embedder once; two first questions must not open two
            if key not in self._open:
                self._open[key] = open_retriever(settings, Path(kb_path))
                while len(self._open) > self.limit:
                    self._open.popitem(last=False)
            self._open.move_to_end(key)
            return self._open[key]

    def is_open(self, settings: Settings, kb_path: Path) -> bool:
        return retriever_key(settings, kb_path) in self._open

    def forget(self, kb_path: Path) -> None:
        """Close every retriever over ``kb_path`` (before its folder goes away)."""
        where = repr(str(Path(kb_path).resolve()))
        with self._lock:
            for key in [k for k in self._open if k.startswith("(" + where + ",")]:
                self._open.pop(key).kb.close()


retrievers = Retrievers()


def get_retriever(settings: Settings, kb_path: Path):
    return retrievers.get(settings, kb_path)


def get_model(settings: Settings):
    """The loaded LLM for ``settings.llm`` (with its adapter), loaded once per process and shared."""
    from engine.models import load_model

    return load_model(settings.llm, settings.cache_dir, adapters_dir=settings.adapters_dir)


def model_is_loaded(settings: Settings) -> bool:
    from engine.models import is_loaded

    return is_loaded(settings.llm, settings.cache_dir, settings.adapters_dir)


def upstreams(settings: Settings, timeout: float = 3.0) -> dict:
    """For each stage an OpenAI-compatible server runs (``llm`` / ``embedding`` with backend "openai"): its URL,
    whether it answered ``GET /models`` within ``timeout`` seconds, and whether it lists the model asked for. A
    server that is down makes every question fail, so readiness must say so."""
    from kbcore.remote import OpenAIClient, RemoteError

    found = {}
    for section in ("llm", "embedding"):
        cfg = getattr(settings, section)
        if cfg.backend != "openai":
            continue
        adapter = getattr(cfg, "adapter", None)
        wanted = Path(adapter).name if adapter else cfg.model  # an adapter is served under its own name
        try:
            client = OpenAIClient(section, cfg.base_url, api_key=cfg.api_key, timeout=timeout)
        except RemoteError as exc:
            found[section] = {"base_url": cfg.base_url, "reachable": False, "model": wanted, "served": False,
                              "error": str(exc)}
            continue
        served = client.models()
        client.http.close()
        found[section] = {"base_url": client.base_url, "reachable": served is not None, "model": wanted,
                          "served": served is not None and wanted in served}
    return found


def answerer(settings: Settings, kb_path: Path):
    """An ``llm.Answerer`` over the knowledge base with the shared model: what both front ends ask."""
    from llm.answerer import Answerer

    return Answerer(settings, get_retriever(settings, kb_path), get_model(settings))


def citations(answer: Answer) -> list[dict]:
    """The answer's citations as the front ends show them: number, document, pages, label, quoted passage."""
    headings = {h.chunk.id: h.heading for h in answer.hits}  # a workbook citation names its sheet by it
    return [{"index": c.index, "source": c.source, "pages": list(c.pages), "chunk_id": c.chunk_id,
             "label": state.citation_label(c, headings.get(c.chunk_id, "")), "snippet": c.snippet}
            for c in answer.citations]


def answer_fields(answer: Answer) -> dict:
    """Everything a front end shows beside the text: found or not and why, unverified claims, the search."""
    return {"found": answer.found, "citations": citations(answer), "unsupported": list(answer.unsupported),
            "unmentioned": list(answer.unmentioned), "search_query": answer.search_query}


# ---------------------------------------------------------------- ingest jobs
class JobsFull(RuntimeError):
    """Too many ingest jobs waiting; the caller should try again later."""


@dataclasses.dataclass
class IngestJob:
    id: str
    kb: str
    files: int
    status: str = "queued"  # queued, running, done, failed
    done: int = 0
    total: int = 0
    current: str = ""
    embedded: int = 0
    rows: list[dict] = dataclasses.field(default_factory=list)
    error: str | None = None
    created: float = dataclasses.field(default_factory=time.time)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    def view(self) -> dict:
        return {"id": self.id, "kb": self.kb, "status": self.status, "files": self.files, "done": self.done,
                "total": self.total, "current": self.current, "chunks_embedded": self.embedded,
                "results": list(self.rows), "error": self.error}


class IngestJobs:
    """Ingests run one at a time on a thread of their own, in order of arrival, so a long one never holds a
    request open or blocks chat (its embedding shares the compute thread with generations slice by slice).
    Finished jobs are remembered for polling, the most recent ``keep`` of them."""

    def __init__(self, max_pending: int, keep: int = 100):
        self.max_pending = max_pending
        self.keep = keep
        self._jobs: OrderedDict[str, IngestJob] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbchat-ingest")

    def submit(self, settings: Settings, kb: str, kb_path: Path,
               uploads: Sequence[tuple[str, bytes | state.AppInputError]]) -> IngestJob:
        with self._lock:
            pending = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if pending >= self.max_pending:
                raise JobsFull(f"{pending} ingest jobs are waiting or running (api.max_ingest_jobs); try again later")
            job = IngestJob(id=uuid.uuid4().hex[:16], kb=kb, files=len(uploads))
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.finished.is_set()]
            for old in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[old]
        self._worker.submit(self._run, job, settings, kb_path, list(uploads))
        return job

    def get(self, job_id: str) -> IngestJob | None:
        return self._jobs.get(job_id)

    def pending(self) -> int:
        return sum(not j.finished.is_set() for j in list(self._jobs.values()))

    def busy(self, kb: str) -> bool:
        """Whether a job for ``kb`` is waiting or running (its folder must not be deleted meanwhile)."""
        return any(j.kb == kb and not j.finished.is_set() for j in list(self._jobs.values()))

    def _run(self, job: IngestJob, settings: Settings, kb_path: Path, uploads) -> None:
        job.status = "running"

        def progress(done, total, source, result):
            job.done, job.total, job.current = done, total, source

        def on_embedded(n):
            job.embedded += n

        try:
            job.rows = state.ingest_uploads(uploads, settings, kb_path, progress=progress, on_embedded=on_embedded)
            job.status = "done"
        except Exception as exc:  # a busy knowledge base, another embedding model: the job says so
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.current = ""
            job.finished.set()

