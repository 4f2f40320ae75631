"""What the app does, without Streamlit: knowledge-base folders, safe uploads, ingest rows, citation labels.

Everything here is plain Python so it can be tested (and doctested) without a browser; ``app/main.py`` only
draws widgets and calls these functions and the packages.

Uploads are stored under ``<kb_root>/<kb name>/files/`` with sanitised names, so nothing a user types or
uploads can write outside the knowledge-base folder.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ingest.parse import SUPPORTED_SUFFIXES as PARSER_SUFFIXES
from kbcore.config import Settings
from kbcore.store import KnowledgeBase
from kbcore.types import Citation

FILES_DIR = "files"
# Same limit as .streamlit/config.toml's server.maxUploadSize (MB), enforced here too for the folder path.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SUPPORTED_SUFFIXES = tuple(PARSER_SUFFIXES)  # whatever ingest can parse
_MAX_NAME_CHARS = 120


class AppInputError(ValueError):
    """Something the user typed or uploaded cannot be used; the message says why."""


# ---------------------------------------------------------------- knowledge bases
def sanitize_kb_name(name: str) -> str:
    """A folder name for a knowledge base: letters (Chinese too), digits, ``-`` and ``_`` only.

    >>> sanitize_kb_name("  My Docs 2024 ")
    'My-Docs-2024'
    >>> sanitize_kb_name("../../etc")
    'etc'
    >>> sanitize_kb_name("法规 库")
    '法规-库'
    >>> sanitize_kb_name("...")
    Traceback (most recent call last):
    ...
    app.state.AppInputError: a knowledge-base name needs at least one letter or digit (got '...')
    """
    cleaned = re.sub(r"[^\w-]+", "-", unicodedata.normalize("NFKC", name)).strip("-_")[:64]
    if not cleaned:
        raise AppInputError(f"a knowledge-base name needs at least one letter or digit (got {name!r})")
    return cleaned


def list_kbs(kb_root: Path, default: str | None = None) -> list[str]:
    """Knowledge-base folders under ``kb_root`` (sorted), with ``default`` first even before it exists."""
    root = Path(kb_root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if default and default not in found:
        found.insert(0, default)
    elif default:
        found.remove(default)
        found.insert(0, default)
    return found


def create_kb_folder(kb_root: Path, name: str) -> str:
    """Make ``kb_root/<sanitised name>/files`` and return the sanitised name. The database itself is created
    by the first ingest (it needs the embedder to record the model)."""
    clean = sanitize_kb_name(name)
    (Path(kb_root) / clean / FILES_DIR).mkdir(parents=True, exist_ok=True)
    return clean


def kb_documents(kb_path: Path) -> list[dict]:
    """One row per document (empty when the knowledge base has not been built yet)."""
    if not KnowledgeBase.exists(kb_path):
        return []
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        return [{"source": d.source, "title": d.title, "pages": d.pages, "chunks": d.chunks} for d in kb.documents()]
    finally:
        kb.close()


# ---------------------------------------------------------------- uploads
def sanitize_filename(name: str) -> str:
    """A safe file name: no folders, no control or shell-special characters, no leading dot, length capped,
    the (lower-cased) extension kept.

    >>> sanitize_filename("../../etc/passwd.txt")
    'passwd.txt'
    >>> sanitize_filename("C:\\\\Users\\\\me\\\\报告 (终稿).PDF")
    '报告 (终稿).pdf'
    >>> sanitize_filename(".hidden.md")
    'hidden.md'
    >>> sanitize_filename('a<b>|c?.html')
    'a_b__c_.html'
    """
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = re.sub(r'[<>:"|?*]', "_", base).strip().lstrip(".").strip()
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = suffix.lower()
    stem = stem[: _MAX_NAME_CHARS - len(suffix) - 1].strip() or "upload"
    return f"{stem}.{suffix}" if suffix else stem


@dataclass(frozen=True)
class Rejected:
    """An upload refused before ingest (too large, unsupported type): shown as a failed row."""

    source: str
    reason: str


def save_upload(files_dir: Path, name: str, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Write one uploaded file into ``files_dir`` under its sanitised name (replacing an older upload of the
    same name, so re-uploading a changed file updates its document). Raises ``AppInputError`` with the reason."""
    safe = sanitize_filename(name)
    if not safe.lower().endswith(SUPPORTED_SUFFIXES):
        raise AppInputError(f"unsupported file type (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if len(data) > max_bytes:
        raise AppInputError(f"file is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    files_dir = Path(files_dir).resolve()
    target = (files_dir / safe).resolve()
    if target.parent != files_dir:  # sanitising makes this impossible; checked anyway
        raise AppInputError("file name points outside the knowledge-base folder")
    files_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def files_on_disk(path: str) -> list[tuple[str, bytes]]:
    """(name, bytes) for a file path, or for the files directly inside a folder path, on this machine.
    This is the "ingest from a folder" route; it goes through the same ``save_upload`` as browser uploads."""
    p = Path(path.strip()).expanduser()
    if p.is_file():
        paths = [p]
    elif p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
    else:
        raise AppInputError(f"{path!r} is neither a file nor a folder on this machine")
    out = []
    for q in paths:
        if q.suffix.lower() in SUPPORTED_SUFFIXES:
            out.append((q.name, q.read_bytes()))
    if not out:
        raise AppInputError(f"no supported files ({', '.join(SUPPORTED_SUFFIXES)}) in {path!r}")
    return out


ProgressFn = Callable[[int, int, str, object], None]


def ingest_uploads(uploads: Iterable[tuple[str, bytes]], settings: Settings, kb_path: Path,
                   progress: ProgressFn | None = None, on_embedded: Callable[[int], None] | None = None
                   ) -> list[dict]:
    """Save uploads under ``kb_path/files`` and ingest them; one result row per file (refused uploads included).

    Rows: ``{"file", "status", "reason", "pages", "chunks"}``, status one of added/updated/skipped/failed.
    """
    from ingest import ingest_files

    saved: list[Path] = []
    rejected: list[Rejected] = []
    for name, data in uploads:
        try:
            saved.append(save_upload(Path(kb_path) / FILES_DIR, name, data))
        except AppInputError as exc:
            rejected.append(Rejected(sanitize_filename(name), str(exc)))
    rows = [{"file": r.source, "status": "failed", "reason": r.reason, "pages": 0, "chunks": 0} for r in rejected]
    if saved:
        report = ingest_files(saved, settings, kb_path=kb_path, progress=progress, on_embedded=on_embedded)
        rows += [{"file": r.source, "status": r.status, "reason": r.reason, "pages": r.pages, "chunks": r.chunks}
                 for r in report.results]
        # A file that failed and has no document behind it is not kept: files/ mirrors what the kb holds.
        failed = {r.source for r in report.failures}
        known = {d["source"] for d in kb_documents(kb_path)}
        for path in saved:
            if path.name in failed and path.name not in known:
                path.unlink(missing_ok=True)
    return rows


def delete_kb_document(kb_path: Path, source: str) -> bool:
    """Remove a document from the knowledge base and its stored upload, if it has one."""
    from ingest import delete_document

    removed = delete_document(kb_path, source)
    stored = (Path(kb_path) / FILES_DIR / sanitize_filename(source)).resolve()
    if stored.parent == (Path(kb_path) / FILES_DIR).resolve() and stored.is_file():
        stored.unlink()
    return removed


# ---------------------------------------------------------------- chat
def pages_label(pages: Sequence[int]) -> str:
    """
    >>> pages_label([3]), pages_label([3, 4, 5]), pages_label([])
    ('p. 3', 'pp. 3–5', '')
    """
    if not pages:
        return ""
    return f"p. {pages[0]}" if len(pages) == 1 else f"pp. {pages[0]}–{pages[-1]}"


def citation_label(c: Citation) -> str:
    """
    >>> citation_label(Citation(2, "zhengfu-caigou-fa.pdf", [5], "……"))
    '[2] zhengfu-caigou-fa.pdf · p. 5'
    """
    label = f"[{c.index}] {c.source}"
    return f"{label} · {pages_label(c.pages)}" if c.pages else label


def chat_history(messages: Sequence[dict]) -> list[dict]:
    """The role/content pairs the answerer takes as history.

    >>> chat_history([{"role": "user", "content": "q", "citations": []}])
    [{'role': 'user', 'content': 'q'}]
    """
    return [{"role": m["role"], "content": m["content"]} for m in messages]
