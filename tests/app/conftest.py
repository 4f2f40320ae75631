"""Fixtures for the app tests: a tiny random Qwen2 with the real tokenizer, and a clean app environment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_FILE = str(REPO_ROOT / "app" / "main.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 (fast, fp32) saved with the real Qwen2.5 tokenizer, so prompts and streaming go
    through the same code as the real model. It cannot cite: citations are tested with the real model."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kbcore.config import LLMSettings, Settings
    from engine.models import resolve_model_dir

    real = Path(resolve_model_dir(LLMSettings(), Settings().cache_dir))  # converts once when missing (~1 min)
    out = tmp_path_factory.mktemp("tiny-qwen2")
    for name in TOKENIZER_FILES:
        if (real / name).is_file():
            shutil.copy(real / name, out / name)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture
def app_env(tmp_path, monkeypatch, eval_dir):
    """A fresh knowledge-base root and adapters folder; returns the kb root. Settings come from the code
    defaults plus these variables only (a developer's kbchat.toml is ignored by pointing at an empty one)."""
    kb_root = tmp_path / "kb"
    kb_root.mkdir()
    config = tmp_path / "kbchat.toml"
    config.write_text("", encoding="utf-8")
    for name in [n for n in __import__("os").environ if n.startswith("KBCHAT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KBCHAT_CONFIG", str(config))
    monkeypatch.setenv("KBCHAT_KB_ROOT", str(kb_root))
    monkeypatch.setenv("KBCHAT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    # "Ingest from path" reads only inside folders an operator allows: here the corpus and this test's folder.
    monkeypatch.setenv("KBCHAT_APP__ALLOWED_FOLDERS", f"{eval_dir}{__import__('os').pathsep}{tmp_path}")
    return kb_root


def assert_quotes_the_kb(kb_path: Path, label: str, quoted: str) -> None:
    """A citation as the app shows it ("[n] file · p. X" or "pp. X–Y", the passage quoted) must quote the start
    of a chunk of that file whose pages are the ones in the label: the app shows the Answer's citation
    faithfully, whatever the model chose to cite."""
    import re

    from kbcore.store import KnowledgeBase

    match = re.fullmatch(r"\[(\d+)\] (.+?) · pp?\. (\d+)(?:–(\d+))?", label.strip())
    assert match, f"citation label {label!r} does not name a file and page"
    source, first, last = match.group(2), int(match.group(3)), int(match.group(4) or match.group(3))
    # Whitespace runs compare as one space: a browser shows the passage's line breaks as spaces.
    passage = " ".join(quoted.strip().removesuffix("…").split())
    assert passage, f"citation {label!r} quotes nothing"
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        chunks = kb.chunks(source)
    finally:
        kb.close()
    assert chunks, f"{source} is not in the knowledge base"
    assert any(" ".join(c.text.split()).startswith(passage) and (c.page_start, c.page_end) == (first, last)
               for c in chunks), \
        f"{label}: the quoted passage is not the start of a chunk on those pages: {passage[:80]!r}"
