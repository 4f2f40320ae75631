"""Shared fixtures. The development corpus lives in ../shared/eval beside the repository."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def eval_kb_path(eval_dir, settings, tmp_path_factory):
    """A knowledge base of all 18 PDFs of ../shared/eval/docs, built once per test session with the default
    embedder (about a minute on 2 cores)."""
    from ingest import ingest_folder

    path = tmp_path_factory.mktemp("eval-kb") / "kb"
    report = ingest_folder(eval_dir / "docs", settings, kb_path=path)
    assert report.summary()["files_failed"] == 0, report.summary()
    return path


@pytest.fixture(scope="session")
def eval_retriever(eval_kb_path, settings):
    from retrieval import open_retriever

    return open_retriever(settings, eval_kb_path)
