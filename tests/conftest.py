"""Shared fixtures. The development corpus lives in ../shared/eval beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO_ROOT.parent / "shared" / "eval"


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    if not EVAL_DIR.is_dir():
        pytest.skip(f"development corpus not found at {EVAL_DIR}")
    return EVAL_DIR


@pytest.fixture(scope="session")
def settings():
    """Code defaults only (no kbchat.toml, no KBCHAT_* variables), with the shared model cache."""
    from kbcore.config import load_settings

    return load_settings(env={}, use_default_file=False)


def _eval_kb_key(eval_dir: Path, settings) -> str:
    """Changes whenever the corpus, the code that builds a knowledge base, or the embedding settings change."""
    import hashlib

    digest = hashlib.sha256(repr((settings.embedding, settings.chunking)).encode())
    files = sorted((eval_dir / "docs").glob("*")) + sorted(
        p for package in ("ingest", "kbcore") for p in (REPO_ROOT / package).glob("*.py"))
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def eval_kb_path(eval_dir, settings, tmp_path_factory):
    """A knowledge base of all 18 PDFs of ../shared/eval/docs with the default embedder (about 2.5 minutes on
    2 cores). Kept in the model cache keyed by corpus + ingest code + settings, so only the first run on a
    machine, or the first after such a change, pays for it; each session works on its own copy."""
    import shutil

    from ingest import ingest_folder

    cached = settings.cache_dir / "test-kb" / _eval_kb_key(eval_dir, settings)
    if not (cached / "kb.sqlite").is_file():
        building = tmp_path_factory.mktemp("eval-kb-build") / "kb"
        report = ingest_folder(eval_dir / "docs", settings, kb_path=building)
        assert report.summary()["files_failed"] == 0, report.summary()
        shutil.rmtree(cached.parent, ignore_errors=True)  # older keys are stale
        staged = cached.parent / f".{cached.name}.{os.getpid()}"
        shutil.copytree(building, staged, ignore=shutil.ignore_patterns("lock"))
        os.replace(staged, cached)  # another session building the same key at once: last one wins, both whole
    path = tmp_path_factory.mktemp("eval-kb") / "kb"
    shutil.copytree(cached, path)
    return path


@pytest.fixture(scope="session")
def eval_retriever(eval_kb_path, settings):
    from retrieval import open_retriever

    return open_retriever(settings, eval_kb_path)
