"""What the app does, without Streamlit: knowledge-base folders, safe uploads, ingest rows, citation labels.

Everything here is plain Python so it can be tested (and doctested) without a browser; ``app/main.py`` only
draws widgets and calls these functions and the packages.

Uploads are stored under ``<kb_root>/<kb name>/files/`` with sanitised names, so nothing a user types or
uploads can write outside the knowledge-base folder. A stored copy is named by its document's source key and is
written only once the knowledge base has taken that version in: an upload that fails (or meets a busy
knowledge base) leaves the previous copy as it was.

The app reads files on the server only inside the folders an operator lists in ``[app] allowed_folders``
(none by default), only regular files there, and checks sizes before reading anything.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ingest.parse import SUPPORTED_SUFFIXES as PARSER_SUFFIXES
from kbcore.config import Settings
from kbcore.locations import location_label
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


class UnknownKnowledgeBase(AppInputError):
    """No knowledge-base folder of that name."""


def existing_kb(kb_root: Path, name: str) -> Path:
    """The folder of the knowledge base ``name``: a name that sanitising would change (``..``, a slash) is refused,
    so nothing a caller types reaches outside ``kb_root``; a folder that does not exist is ``UnknownKnowledgeBase``."""
    if not name or sanitize_kb_name(name) != name:
        raise AppInputError(f"{name!r} is not a knowledge-base name: use letters, digits, '-' and '_' "
                            f"(for example {sanitize_kb_name(name or 'kb')!r})")
    path = Path(kb_root) / name
    if not path.is_dir():
        raise UnknownKnowledgeBase(f"no knowledge base {name!r} (known: {', '.join(list_kbs(kb_root)) or 'none'})")
    return path


def delete_kb(kb_root: Path, name: str) -> None:
    """Remove the knowledge base ``name`` and its stored uploads. It is first renamed out of sight under its write
    lock, so an ingest's write in progress is never cut off (``KnowledgeBaseBusyError``) and a crash halfway leaves
    either the whole knowledge base or a hidden folder, never half of one. An ingest that is parsing (it holds the
    lock only to write) stops at its next write with ``KnowledgeBaseError``."""
    path = existing_kb(kb_root, name)
    hidden = path.with_name(f".deleted-{name}-{os.getpid()}-{os.urandom(4).hex()}")
    if KnowledgeBase.exists(path):
        kb = KnowledgeBase(path)
        try:
            with kb.writer():
                os.rename(path, hidden)
        finally:
            kb.close()
    else:
        os.rename(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


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


def files_on_disk(path: str, allowed_folders: Sequence[Path] = (), *, max_bytes: int = MAX_UPLOAD_BYTES
                  ) -> list[tuple[str, bytes | AppInputError]]:
    """(name, bytes) for a file path, or for the regular files directly inside a folder path, on this machine.
    This is the "ingest from a folder" route; it goes through the same ``ingest_uploads`` as browser uploads.

    Only paths inside ``allowed_folders`` (after resolving links) are read; with none, nothing is. A link, FIFO
    or device inside is left out, and a file over ``max_bytes`` is not read: its entry holds the
    ``AppInputError`` that ``ingest_uploads`` reports as a failed row."""
    if not allowed_folders:
        raise AppInputError("ingesting from a path on the server is off; an operator can allow folders with "
                            "[app] allowed_folders in kbchat.toml (or KBCHAT_APP__ALLOWED_FOLDERS)")
    try:
        p = Path(path.strip()).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        raise AppInputError(f"{path!r} is neither a file nor a folder on this machine") from None
    roots = [Path(folder).expanduser().resolve() for folder in allowed_folders]
    if not any(p == root or p.is_relative_to(root) for root in roots):
        raise AppInputError(f"{path!r} is outside the folders this app may read "
                            f"({', '.join(map(str, roots))}; setting app.allowed_folders)")
    if p.is_file():
        paths = [p]
    elif p.is_dir():
        paths = sorted(q for q in p.iterdir() if not q.name.startswith("."))
    else:
        raise AppInputError(f"{path!r} is neither a regular file nor a folder")
    out: list[tuple[str, bytes | AppInputError]] = []
    for q in paths:
        if q.suffix.lower() in SUPPORTED_SUFFIXES:
            try:
                out.append((q.name, _read_regular(q, max_bytes)))
            except AppInputError as exc:
                out.append((q.name, exc))
    if not out:
        raise AppInputError(f"no supported files ({', '.join(SUPPORTED_SUFFIXES)}) in {path!r}")
    return out


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file no bigger than ``max_bytes``, checked before reading (a link is not followed,
    a FIFO does not block), and read no further than the limit in case it grows meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AppInputError("a symbolic link: links are not followed" if os.path.islink(path) else
                            f"cannot read the file: {exc.strerror or exc}") from None
    with open(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AppInputError("not a regular file (a FIFO or device): only regular files are read")
        if info.st_size > max_bytes:
            raise AppInputError(_too_big(info.st_size, max_bytes))
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AppInputError(_too_big(len(data), max_bytes))
    return data


def _too_big(size: int, max_bytes: int) -> str:
    return f"file is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit"


ProgressFn = Callable[[int, int, str, object], None]


def ingest_uploads(uploads: Iterable[tuple[str, bytes | AppInputError]], settings: Settings, kb_path: Path,
                   progress: ProgressFn | None = None, on_embedded: Callable[[int], None] | None = None
                   ) -> list[dict]:
    """Ingest uploads and keep a copy of each one the knowledge base took in under ``kb_path/files``; one result
    row per file (refused uploads included; an ``AppInputError`` in place of the bytes is such a refusal).

    Uploads are staged in a private folder first and moved over the stored copy only when their document was
    added, updated or found unchanged, so a failed or refused re-upload never replaces the good copy.
    Rows: ``{"file", "status", "reason", "pages", "chunks"}``, status one of added/updated/skipped/failed.
    """
    from ingest import ingest_files

    files_dir = Path(kb_path) / FILES_DIR
    files_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=files_dir))
    try:
        staged: dict[str, Path] = {}
        rejected: list[Rejected] = []
        for name, data in uploads:
            safe = sanitize_filename(name)
            try:
                if isinstance(data, AppInputError):
                    raise data
                if safe in staged:
                    raise AppInputError("another file in this upload has the same name")
                staged[safe] = save_upload(staging, name, data, max_bytes=settings.app.max_upload_mb * 2**20)
            except AppInputError as exc:
                rejected.append(Rejected(safe, str(exc)))
        rows = [{"file": r.source, "status": "failed", "reason": r.reason, "pages": 0, "chunks": 0} for r in rejected]
        if staged:
            # ingest_files keys each document by its file name, the same name its stored copy gets.
            report = ingest_files(list(staged.values()), settings, kb_path=kb_path, progress=progress,
                                  on_embedded=on_embedded)
            rows += [{"file": r.source, "status": r.status, "reason": r.reason, "pages": r.pages, "chunks": r.chunks}
                     for r in report.results]
            for r in report.results:
                if r.status in ("added", "updated", "skipped") and r.source in staged:
                    os.replace(staged[r.source], files_dir / r.source)
        return rows
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stored_copy(kb_path: Path, source: str) -> Path | None:
    """The app's stored copy of the document ``source``, if the app keeps one: only documents it ingested
    (source = a sanitised file name, no folders), so ``sub/a.txt`` from a command-line ingest never maps to
    the upload ``a.txt``."""
    if "/" in source or "\\" in source or sanitize_filename(source) != source:
        return None
    files_dir = (Path(kb_path) / FILES_DIR).resolve()
    path = files_dir / source
    return path if path.parent == files_dir and path.is_file() and not path.is_symlink() else None


def delete_kb_document(kb_path: Path, source: str) -> bool:
    """Remove a document from the knowledge base and its stored upload, if it has one."""
    from ingest import delete_document

    removed = delete_document(kb_path, source)
    stored = stored_copy(kb_path, source)
    if removed and stored is not None:
        stored.unlink()
    return removed


def markdown_escape(text: str) -> str:
    r"""Text shown through ``st.markdown`` as the characters it holds: no link, image, emphasis, heading, HTML
    or formula that a document (or an answer quoting one) could smuggle in. Each character is escaped on its
    own, so pieces of a stream can be escaped one by one.

    >>> print(markdown_escape("![x](http://e.x/a.png) *a* $1$ :red[b]"))
    \!\[x\]\(http\:\/\/e\.x\/a\.png\) \*a\* \$1\$ \:red\[b\]
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)


_MARKDOWN_SPECIAL = re.compile(r"[\\`*_{}\[\]<>()#+\-.!|~$:/=&\"']")


# ---------------------------------------------------------------- chat
def citation_label(c: Citation, heading: str = "") -> str:
    """The label of a cited passage; ``heading`` is its chunk's heading path (it names a workbook's sheet).

    >>> citation_label(Citation(2, "zhengfu-caigou-fa.pdf", [5], "……"))
    '[2] zhengfu-caigou-fa.pdf · p. 5'
    >>> citation_label(Citation(1, "汇报.pptx", [7], "……"))
    '[1] 汇报.pptx · slide 7'
    """
    label = f"[{c.index}] {c.source}"
    return f"{label} · {location_label(c.source, c.pages, heading)}" if c.pages else label


def chat_history(messages: Sequence[dict]) -> list[dict]:
    """The role/content pairs the answerer takes as history.

    >>> chat_history([{"role": "user", "content": "q", "citations": []}])
    [{'role': 'user', 'content': 'q'}]
    """
    return [{"role": m["role"], "content": m["content"]} for m in messages]
