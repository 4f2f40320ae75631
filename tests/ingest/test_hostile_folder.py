"""A folder of hostile files through the real ingest (CLI and Python API, real embedder): each bad file fails
with its name and reason, quickly, the rest is ingested, and the knowledge base stays consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.pipeline import ingest_folder
from kbcore.config import load_settings
from kbcore.store import KnowledgeBase
from tests.ingest.checks import assert_consistent

sys.path.insert(0, str(Path(__file__).parent))
from hostile import shared_stream_pdf  # noqa: E402  (beside this file)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
NOTE = "# 须知\n\n采购申请由使用部门填写，写明品名、数量和预算金额。\n"


@pytest.fixture(scope="module")
def settings():
    return load_settings(env={}, use_default_file=False)


def test_cli_refuses_links_fifos_and_oversized_files_and_ingests_the_rest(tmp_path):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    (docs / "good.md").write_text(NOTE, encoding="utf-8")
    (docs / "heading.md").write_text("# a" + " " * 10_000 + "b\n正文。\n", encoding="utf-8")
    (docs / "title.html").write_text("<title>" + "题" * 20_000 + "</title><p>正文。</p>", encoding="utf-8")
    (docs / "comments.html").write_text("<p>正文。</p>" + "<!--" * 50_000, encoding="utf-8")
    shared_stream_pdf(docs / "shared.pdf")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(docs / "pipe.txt")
    (docs / "etc").symlink_to("/etc")  # a link to a folder is not entered
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("KBCHAT_CONFIG", None)
    started = time.perf_counter()
    # Before: the FIFO (or /dev/zero) hung the run for ever, holding the write lock.
    done = subprocess.run([sys.executable, "-m", "ingest", str(docs), "--kb", str(kb_path), "--json", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    reasons = {f["source"]: f["reason"] for f in summary["failures"]}
    assert summary["files_added"] == 2 and set(reasons) == {
        "heading.md", "title.html", "shared.pdf", "passwd.txt", "zero.txt", "pipe.txt", "etc"}
    assert "setting limits.max_heading_chars" in reasons["heading.md"]
    assert "a title of 20,000 characters" in reasons["title.html"]
    assert "page 1 holds 1,010,000 characters" in reasons["shared.pdf"]
    assert all("symbolic link" in reasons[name] for name in ("passwd.txt", "zero.txt", "etc"))
    assert "FIFO" in reasons["pipe.txt"]
    assert f"FAILED passwd.txt: {reasons['passwd.txt']}" in done.stdout
    # Everything but loading the model and embedding one chunk is bounded: the slow CI bound is generous.
    assert summary["stage_seconds"]["parse"] + summary["stage_seconds"]["scan"] < 10, summary
    assert seconds < 240
    kb = KnowledgeBase(kb_path, readonly=True)
    assert [d.source for d in kb.documents()] == ["comments.html", "good.md"]
    assert [c.text for c in kb.chunks("comments.html")] == ["正文。"]  # an unclosed comment runs to the end
    assert "root:" not in " ".join(c.text for c in kb.chunks())
    kb.close()
    assert_consistent(kb_path)


def test_a_file_over_the_chunk_limit_keeps_its_stored_version(tmp_path, settings):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    (docs / "note.md").write_text(NOTE, encoding="utf-8")
    (docs / "other.md").write_text("# 其他\n\n验收不合格的货物应当在七日内退回供应商。\n", encoding="utf-8")
    assert ingest_folder(docs, settings, kb_path=kb_path).count("added") == 2
    before = KnowledgeBase(kb_path, readonly=True)
    stored = [(c.text, c.heading) for c in before.chunks("note.md")]
    before.close()
    (docs / "note.md").write_text(NOTE + "".join(f"\n## 第{i}节\n\n第{i}节的正文。\n" for i in range(40)),
                                  encoding="utf-8")
    (docs / "other.md").write_text("# 其他\n\n验收合格后付款。\n", encoding="utf-8")
    report = ingest_folder(docs, settings.with_overrides(limits={"max_chunks": 10}), kb_path=kb_path)
    [failure] = report.failures
    assert failure.source == "note.md" and failure.reason == (
        "41 chunks, over the limit of 10 (setting limits.max_chunks) (the previously ingested version is kept)")
    assert report.count("updated") == 1  # the rest of the folder went in
    kb = KnowledgeBase(kb_path, readonly=True)
    assert [(c.text, c.heading) for c in kb.chunks("note.md")] == stored
    assert "验收合格后付款。" in kb.chunks("other.md")[0].text
    kb.close()
    assert_consistent(kb_path)


def test_a_parser_crash_costs_one_file_not_the_run(tmp_path, settings, monkeypatch):
    import ingest.pipeline

    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    (docs / "a.md").write_text(NOTE, encoding="utf-8")
    (docs / "b.md").write_text("# 乙\n\n第二份文件。\n", encoding="utf-8")
    real = ingest.pipeline.clean_document

    def clean_or_crash(parsed):
        if parsed.path.name == "a.md":
            raise IndexError("list index out of range")
        return real(parsed)

    monkeypatch.setattr(ingest.pipeline, "clean_document", clean_or_crash)
    report = ingest_folder(docs, settings, kb_path=kb_path)
    assert [(r.source, r.status) for r in report.results] == [("a.md", "failed"), ("b.md", "added")]
    assert report.failures[0].reason == "cannot be read: IndexError: list index out of range"
    assert_consistent(kb_path)
