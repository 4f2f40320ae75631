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
