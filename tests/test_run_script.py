"""The README's main command, `KBCHAT_NO_APP=1 bash scripts/run.sh`, ingests the bundled samples (run in a
scratch copy of the repository layout, so the working tree's kb/ is left alone)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_script_ingests_the_samples_and_stops_before_the_app(tmp_path, local_server):
    from kbcore.store import KnowledgeBase

    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    # Every package pyproject.toml names, so that setup.sh can reinstall when the requirements stamp is stale.
    for name in (".venv", "samples", "requirements.txt", "pyproject.toml", "README.md", "kbcore", "ingest", "retrieval",
                 "engine", "llm", "finetune", "app"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "KBCHAT_NO_APP": "1"}
    run = subprocess.run(["bash", str(tmp_path / "scripts" / "run.sh")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    kb = KnowledgeBase(tmp_path / "kb" / "default")
    samples = [p for p in (ROOT / "samples").iterdir() if p.suffix in (".pdf", ".md", ".txt", ".html")]
    documents = kb.documents()
    assert {d.source for d in documents} >= {p.name for p in samples} - {"README.md"}
    assert all(d.chunks > 0 for d in documents) and kb.chunk_count() == sum(d.chunks for d in documents)
    kb.close()

    # KBCHAT_SERVE=api serves the same knowledge bases over HTTP instead of opening the app.
    port = local_server.free_port()
    env = {**os.environ, "KBCHAT_SERVE": "api", "API_PORT": str(port), "KBCHAT_API__PRELOAD": "false"}
    server = subprocess.Popen(["bash", str(tmp_path / "scripts" / "run.sh")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        models = local_server.wait_json(f"http://127.0.0.1:{port}/v1/models", server, timeout=300, poll=0.5)
        # The knowledge base, then the model and the embedding model the server also serves by name.
        assert [m["id"] for m in models["data"]] == ["default", "qwen2.5-0.5b", "multilingual-e5-small"]
    finally:
        server.terminate()
        server.wait(30)


def test_run_script_names_what_it_can_serve():
    run = subprocess.run(["bash", str(ROOT / "scripts" / "run.sh")], env={**os.environ, "KBCHAT_SERVE": "web"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "KBCHAT_SERVE must be app, api or both (got 'web')" in run.stderr
