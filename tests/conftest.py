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


@pytest.fixture(scope="session")
def default_model_dir(settings):
    """The default model converted from its PyPI parts (once per machine: ~1 min, then cached)."""
    from engine.models import resolve_model_dir

    return resolve_model_dir(settings.llm, settings.cache_dir)


@pytest.fixture(scope="session")
def random_qwen2(default_model_dir, tmp_path_factory):
    """``random_qwen2(name, **sizes)``: a 2-layer Qwen2 with random weights, the given sizes (hidden_size,
    intermediate_size, heads), and the real Qwen tokenizer and chat template. Untied output weights: tied random
    embeddings just echo the last prompt token (a newline here)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    def make(name, **sizes):
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
        config = Qwen2Config(vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=4096,
                             tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, **sizes)
        path = tmp_path_factory.mktemp(name)
        Qwen2ForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(random_qwen2):
    return random_qwen2("tiny-qwen2", hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=1)


class LocalServer:
    """A server started as a child process on a free loopback port: the port to give it, and waiting until it
    answers (the API's own command and ``scripts/run.sh`` are both driven this way)."""

    @staticmethod
    def free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    @staticmethod
    def wait_json(url: str, server, timeout: float, poll: float = 0.2) -> dict:
        """The JSON at ``url`` once it answers; fails with the server's output if it exits or ``timeout`` passes."""
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                return httpx.get(url, timeout=2).json()
            except httpx.TransportError:
                output = server.stdout or server.stderr
                assert server.poll() is None and time.monotonic() < deadline, output.read()[-3000:]
                time.sleep(poll)


@pytest.fixture
def local_server() -> type[LocalServer]:
    return LocalServer
