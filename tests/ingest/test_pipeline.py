"""End-to-end ingest with the real default embedder on small subsets of ../shared/eval."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.clean import clean_document
from ingest.parse import parse_file
from ingest.pipeline import delete_document, ingest_files, ingest_folder, passage_text
from ingest.split import split_document
from kbcore.config import load_settings
from kbcore.store import EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseBusyError, NewChunk
from kbcore.text import openings
from tests.ingest.checks import assert_consistent

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

NOTE = """# 采购须知

本须知说明单位内部采购的基本流程。

## 申请

采购申请由使用部门填写，写明品名、数量和预算金额。金额超过五万元的申请需要分管领导签字。

## 验收

货物到达后三日内，由使用部门和资产管理员共同验收。验收不合格的货物应当在七日内退回供应商。
"""
OLD_SENTENCE = "货物到达后三日内，由使用部门和资产管理员共同验收。"
NEW_SENTENCE = "货物到达后五个工作日内，由质检小组出具书面验收报告。"


@pytest.fixture(scope="module")
def settings():
    return load_settings(env={}, use_default_file=False)


@pytest.fixture(scope="module")
def embedder(settings):
    from kbcore.embedding import load_embedder

    return load_embedder(settings.embedding, settings.cache_dir)


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("KBCHAT_CONFIG", None)
    return env


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _texts_found(kb: KnowledgeBase, embedder, query: str, k: int = 10) -> list[str]:
    hits = kb.dense_search(embedder.embed_query(query), k=k)
    return [c.text for c in kb.get_chunks([i for i, _ in hits]).values()]


@pytest.mark.parametrize("backend", ["local", "milvus"])
def test_reingest_update_prune_delete(tmp_path, eval_dir, settings, embedder, backend):
    settings = settings.with_overrides(store={"backend": backend})
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    shutil.copy(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", docs / "信息发布.pdf")
    (docs / "notes").mkdir()
    (docs / "notes" / "须知.md").write_text(NOTE, encoding="utf-8")

    first = ingest_folder(docs, settings, kb_path=kb_path)
    assert sorted((r.source, r.status) for r in first.results) == [("notes/须知.md", "added"), ("信息发布.pdf", "added")]
    assert first.chunks_embedded == first.chunks > 5
    kb = KnowledgeBase(kb_path, store=settings.store)
    assert kb.embedding_model == embedder.model_id
    ids, vectors = kb.vectors()
    generation = kb.generation
    pdf_chunks = kb.chunks("信息发布.pdf")
    assert pdf_chunks[0].heading.startswith("政府采购信息发布管理办法")
    assert all(1 <= c.page_start <= c.page_end <= 2 for c in pdf_chunks)

    # Unchanged: nothing parsed, nothing embedded, nothing written.
    again = ingest_folder(docs, settings, kb_path=kb_path)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    assert again.chunks_embedded == 0 and again.stage_seconds["embed"] == 0 and again.stage_seconds["parse"] == 0
    assert again.pages == first.pages and again.chunks == first.chunks
    ids2, vectors2 = kb.vectors()
    assert np.array_equal(ids, ids2) and np.array_equal(vectors, vectors2) and kb.generation == generation

    # Changed: the file's chunks are replaced; only the changed chunk is embedded again.
    assert any(OLD_SENTENCE in t for t in _texts_found(kb, embedder, OLD_SENTENCE))
    (docs / "notes" / "须知.md").write_text(NOTE.replace(OLD_SENTENCE, NEW_SENTENCE), encoding="utf-8")
    changed = ingest_folder(docs, settings, kb_path=kb_path)
    by_source = {r.source: r for r in changed.results}
    assert by_source["notes/须知.md"].status == "updated" and by_source["信息发布.pdf"].status == "skipped"
    assert 1 <= by_source["notes/须知.md"].embedded < by_source["notes/须知.md"].chunks
    note_texts = [c.text for c in kb.chunks("notes/须知.md")]
    assert not any(OLD_SENTENCE in t for t in note_texts) and any(NEW_SENTENCE in t for t in note_texts)
    assert not any(OLD_SENTENCE in t for t in _texts_found(kb, embedder, OLD_SENTENCE, k=50))
    assert [c.id for c in kb.chunks("信息发布.pdf")] == [c.id for c in pdf_chunks]

    # Gone from the folder: kept without --prune, deleted with it.
    (docs / "notes" / "须知.md").unlink()
    kept = ingest_folder(docs, settings, kb_path=kb_path)
    assert [d.source for d in kb.documents()] == ["notes/须知.md", "信息发布.pdf"] and kept.count("deleted") == 0
    pruned = ingest_folder(docs, settings, kb_path=kb_path, prune=True)
    assert [(r.source, r.status) for r in pruned.results if r.status == "deleted"] == [("notes/须知.md", "deleted")]
    assert [d.source for d in kb.documents()] == ["信息发布.pdf"]
    assert not any("质检小组" in t for t in _texts_found(kb, embedder, NEW_SENTENCE, k=50))

    # Uploads: the file name is the source key. Then delete one document by name.
    upload = tmp_path / "上传.md"
    upload.write_text(NOTE, encoding="utf-8")
    uploaded = ingest_files([upload], settings, kb_path=kb_path)
    assert [(r.source, r.status) for r in uploaded.results] == [("上传.md", "added")]
    assert uploaded.chunks_embedded == uploaded.chunks > 0
    assert delete_document(kb_path, "上传.md") and not delete_document(kb_path, "上传.md")
    assert not any(OLD_SENTENCE in t for t in _texts_found(kb, embedder, OLD_SENTENCE, k=50))
    kb.close()


def test_bad_files_fail_one_by_one_and_exit_status_says_so(tmp_path, eval_dir, settings):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    shutil.copytree(eval_dir / "bad", docs)
    shutil.copy(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", docs / "good.pdf")
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    # Without OCR the scan fails and the image is skipped (with OCR: tests/ingest/test_ocr.py).
    run = _cli(str(docs), "--kb", str(kb_path), "--json", "--quiet", "--no-ocr")
    assert run.returncode == 1, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["files_added"], summary["files_failed"], summary["files_skipped"]) == (1, 5, 1)
    assert summary["pages"] == 2 and summary["chunks"] > 0
    reasons = {f["source"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"empty.pdf", "truncated.pdf", "not-a-pdf.pdf", "encrypted.pdf", "scanned-image-only.pdf"}
    assert "password" in reasons["encrypted.pdf"] and "OCR" in reasons["scanned-image-only.pdf"]
    for name in reasons:
        assert f"FAILED {name}: " in run.stdout  # the summary table names each failure
    assert [d.source for d in KnowledgeBase(kb_path, readonly=True).documents()] == ["good.pdf"]


def test_killed_ingest_leaves_a_usable_knowledge_base(tmp_path, eval_dir, settings, embedder):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    # Ingest stores small files after embedding them together (ingest.pipeline.EMBED_SLICE chunks): the first
    # two (68 + 85 chunks) fill a batch, so the third is still embedding when the first are stored.
    names = ["zhaobiao-toubiao-fa.pdf", "zhengfu-caigou-fa-shishi-tiaoli.pdf", "zhengfu-caigou-fa.pdf"]
    for n, name in enumerate(names):
        shutil.copy(eval_dir / "docs" / name, docs / f"{n}-{name}")
    proc = subprocess.Popen([sys.executable, "-m", "ingest", str(docs), "--kb", str(kb_path), "--quiet"],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (kb_path / "kb.sqlite").exists():
                with sqlite3.connect(f"file:{kb_path / 'kb.sqlite'}?mode=ro", uri=True) as db:
                    try:
                        if db.execute("SELECT COUNT(*) FROM documents").fetchone()[0] >= 1:
                            break
                    except sqlite3.OperationalError:
                        pass
            time.sleep(0.05)
        assert proc.poll() is None, "the ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    kb = KnowledgeBase(kb_path)
    stored = kb.documents()
    assert 1 <= len(stored) < len(names)
    for doc in stored:  # every stored document is whole
        assert len(kb.chunks(doc.source)) == doc.chunks > 0
    hits = kb.dense_search(embedder.embed_query("政府采购信息发布"), k=3)
    assert hits and all(i in kb.get_chunks([i for i, _ in hits]) for i, _ in hits)
    kb.close()

    resumed = ingest_folder(docs, settings, kb_path=kb_path)
    assert resumed.count("skipped") == len(stored) and resumed.count("added") == len(names) - len(stored)
    kb = KnowledgeBase(kb_path)
    assert len(kb.documents()) == len(names) and kb.chunk_count() == sum(d.chunks for d in kb.documents())
    kb.close()


def test_a_second_writer_is_refused(tmp_path, eval_dir, settings, embedder):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    shutil.copy(eval_dir / "docs" / "zfcg-xinxi-fabu-guanli-banfa.pdf", docs)
    kb = KnowledgeBase.create(kb_path, embedding_model=embedder.model_id, dimension=embedder.dimension)
    with kb.writer():
        with pytest.raises(KnowledgeBaseBusyError):
            ingest_folder(docs, settings, kb_path=kb_path)
        run = _cli(str(docs), "--kb", str(kb_path), "--quiet")
        assert run.returncode == 2 and "being written" in run.stderr
    assert kb.documents() == []
    kb.close()


def test_a_file_being_parsed_holds_no_write_lock(tmp_path, settings, embedder):
    """While one ingest parses a slow file, the lock is free: a delete (refused at once if the lock were held)
    and an ingest of another folder into the same knowledge base go ahead. Afterwards the run stores what it
    read whole (a document deleted meanwhile comes back complete), writes nothing twice (a file another
    writer stored meanwhile with the same bytes is skipped), and documents, chunks and vectors agree."""
    docs, other, kb_path = tmp_path / "docs", tmp_path / "other", tmp_path / "kb"
    docs.mkdir()
    other.mkdir()
    (docs / "gone.md").write_text("# 乙\n\n这份文件在入库时被删除。\n", encoding="utf-8")
    (docs / "keep.md").write_text("# 甲\n\n这份文件一直不变。\n", encoding="utf-8")
    (docs / "note.md").write_text(NOTE, encoding="utf-8")
    assert ingest_folder(docs, settings, kb_path=kb_path).count("added") == 3
    # Seconds of parsing (19 MB of empty tags, under the 20 MB a text file may have), then one short chunk.
    (docs / "a_slow.html").write_text("<p>慢慢读完的文件。</p>" + "<b></b>" * 2_700_000, encoding="utf-8")
    (docs / "b_same.md").write_text("# 丙\n\n两次入库的同一份文件。\n", encoding="utf-8")
    (docs / "note.md").write_text(NOTE.replace(OLD_SENTENCE, NEW_SENTENCE), encoding="utf-8")
    shutil.copy(docs / "b_same.md", other / "b_same.md")
    (other / "c_new.md").write_text("# 丁\n\n另一个文件夹里的文件。\n", encoding="utf-8")

    parsing, parsed, other_done, out = threading.Event(), threading.Event(), threading.Event(), {}

    def progress(done, total, source, result):
        if (source, result) == ("a_slow.html", None):
            parsing.set()
        if (source, result) == ("b_same.md", None):  # a_slow.html is parsed; b_same.md waits for the other folder
            parsed.set()
            assert other_done.wait(300)

    def run():
        try:
            out["report"] = ingest_folder(docs, settings, kb_path=kb_path, progress=progress)
        except BaseException as exc:  # noqa: BLE001  (shown by the assertion below)
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert parsing.wait(120)
        kb = KnowledgeBase(kb_path)
        try:
            # No waiting for the lock: KnowledgeBaseBusyError at once if the ingest held it.
            with kb.writer() as writer:
                assert writer.delete_document("gone.md") and writer.delete_document("note.md")
            attempts = 0
            while not parsed.is_set():  # at every moment of the parse the lock is free
                with kb.writer():
                    attempts += 1
                time.sleep(0.05)
            assert attempts >= 5  # seconds of parsing went by meanwhile
        finally:
            kb.close()
        beside = ingest_folder(other, settings, kb_path=kb_path)  # while the run waits between files
        assert [(r.source, r.status) for r in beside.results] == [("b_same.md", "added"), ("c_new.md", "added")]
        kb = KnowledgeBase(kb_path, readonly=True)
        stored_beside = kb.document("b_same.md")
        kb.close()
    finally:
        other_done.set()
        thread.join(300)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    statuses = {r.source: (r.status, r.reason) for r in out["report"].results}
    assert statuses == {
        "a_slow.html": ("added", ""),
        "b_same.md": ("skipped", "unchanged (another writer stored this version during the run)"),
        "gone.md": ("skipped", "unchanged"),  # decided by what was stored when the run began: stays deleted
        "keep.md": ("skipped", "unchanged"),
        "note.md": ("added", ""),  # deleted while the run read it: stored again, whole, as the run read it
    }
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        assert [d.source for d in kb.documents()] == ["a_slow.html", "b_same.md", "c_new.md", "keep.md", "note.md"]
        assert kb.document("b_same.md") == stored_beside  # written once, by the other ingest
        assert [c.text for c in kb.chunks("a_slow.html")] == ["慢慢读完的文件。"]
        note = " ".join(c.text for c in kb.chunks("note.md"))
        assert NEW_SENTENCE in note and OLD_SENTENCE not in note
    finally:
        kb.close()
    assert_consistent(kb_path, on_disk=True)


def test_embedding_mismatch_then_rebuild(tmp_path, settings, embedder):
    """A knowledge base recorded with another model (8-d vectors) refuses new embeddings; --rebuild
    re-embeds its stored text with the configured model, after which ingest works again."""
    kb_path, docs = tmp_path / "kb", tmp_path / "docs"
    docs.mkdir()
    (docs / "须知.md").write_text(NOTE, encoding="utf-8")
    chunks = split_document(clean_document(parse_file(docs / "须知.md")), 300, 50)
    assert len(chunks) == 3
    kb = KnowledgeBase.create(kb_path, embedding_model="older-model", dimension=8)
    with kb.writer() as w:
        w.put_document("旧.md", content_hash="0", title="采购须知", pages=1,
                       chunks=[NewChunk(c.ordinal, c.page_start, c.page_end, c.heading, c.text) for c in chunks],
                       vectors=np.random.default_rng(0).normal(size=(len(chunks), 8)).astype("float32"))
    kb.close()

    with pytest.raises(EmbeddingMismatchError, match="--rebuild"):
        ingest_folder(docs, settings, kb_path=kb_path)
    run = _cli(str(docs), "--kb", str(kb_path), "--quiet")
    assert run.returncode == 2 and "older-model" in run.stderr and "--rebuild" in run.stderr

    run = _cli("--rebuild", "--kb", str(kb_path), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"rebuilt_chunks": len(chunks)}
    kb = KnowledgeBase(kb_path)
    assert (kb.embedding_model, kb.dimension) == (embedder.model_id, embedder.dimension)
    stored = kb.chunks("旧.md")
    _, vectors = kb.vectors()
    expected = embedder.embed_passages([passage_text(c.heading, c.text, opening)
                                        for c, opening in zip(stored, openings(stored, settings.chunking.opening_chars))])
    assert np.allclose(vectors, expected, atol=1e-4)
    top = kb.dense_search(embedder.embed_query("金额超过五万元需要谁签字？"), k=1)
    assert "五万元" in kb.get_chunks([top[0][0]])[top[0][0]].text
    kb.close()

    report = ingest_folder(docs, settings, kb_path=kb_path)
    assert report.count("added") == 1 and report.chunks_embedded == report.chunks == len(chunks)


def test_changed_chunk_settings_split_unchanged_files_again(tmp_path, settings):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    (docs / "须知.md").write_text(NOTE * 3, encoding="utf-8")
    first = ingest_folder(docs, settings, kb_path=kb_path)
    smaller = settings.with_overrides(chunking={"chunk_size": 30, "chunk_overlap": 5})
    resplit = ingest_folder(docs, smaller, kb_path=kb_path)
    assert resplit.results[0].status == "updated" and "chunking changed" in resplit.results[0].reason
    assert resplit.notes and "chunk_size 300 -> 30" in resplit.notes[0]
    assert resplit.chunks > first.chunks and 0 < resplit.chunks_embedded <= resplit.chunks
    kb = KnowledgeBase(kb_path)
    assert all(len(c.text) <= 30 for c in kb.chunks("须知.md"))
    kb.close()
    # Splitting the same way again needs no embedding (and none at all once the kb records the new settings).
    again = ingest_folder(docs, smaller, kb_path=kb_path)
    assert again.chunks_embedded == 0 and again.results[0].status in ("updated", "skipped")


def test_a_changed_identity_block_re_embeds_the_chunks_that_carry_it(tmp_path, settings, embedder):
    """Chunks after the first are embedded with the document's identity block, so their stored vectors are
    reused only while both their text and that block are unchanged."""
    body = "".join(f"第{n}项 原告主张被告应当返还借款本金及相应利息，并承担本案全部诉讼费用，本院依法予以审查。" for n in range(12))

    def write(case_number: str, last_words: str) -> None:
        (tmp_path / "docs").mkdir(exist_ok=True)
        (tmp_path / "docs" / "判决.txt").write_text(
            f"民事判决书\n{case_number}\n原告：周雨敏，住北京市。\n被告：陈华，住北京市。\n{body}{last_words}\n",
            encoding="utf-8")

    kb_path = tmp_path / "kb"
    write("（2022）京0105民初39193号", "判决如下。")
    first = ingest_folder(tmp_path / "docs", settings, kb_path=kb_path)
    assert first.chunks >= 3 and first.chunks_embedded == first.chunks
    write("（2023）京0105民初11111号", "判决如下。")  # only the identity block changes
    assert ingest_folder(tmp_path / "docs", settings, kb_path=kb_path).chunks_embedded == first.chunks
    write("（2023）京0105民初11111号", "特此判决。")  # only the last chunk's text changes
    assert ingest_folder(tmp_path / "docs", settings, kb_path=kb_path).chunks_embedded == 1

    kb = KnowledgeBase(kb_path)
    stored = kb.chunks("判决.txt")
    assert openings(stored, settings.chunking.opening_chars)[1] == \
        "（2023）京0105民初11111号\n原告：周雨敏\n被告：陈华"
    expected = embedder.embed_passages([passage_text(c.heading, c.text, opening)
                                        for c, opening in zip(stored, openings(stored, settings.chunking.opening_chars))])
    assert np.allclose(kb.vectors()[1], expected, atol=1e-4)
    kb.close()


def test_upgrading_a_knowledge_base_from_before_identity_blocks_re_embeds_only_what_gained_one(tmp_path, settings):
    docs = tmp_path / "docs"
    docs.mkdir()
    clauses = "".join(f"第{n}条 采购人应当按照规定编制采购预算，并在规定的期限内报送财政部门审批和备案。" for n in range(1, 13))
    (docs / "办法.txt").write_text(f"政府采购管理办法\n第一章 总则\n{clauses}\n", encoding="utf-8")
    (docs / "判决.txt").write_text(f"民事判决书\n（2022）京0105民初1号\n原告：周雨敏。\n被告：陈华。\n{clauses}\n",
                                 encoding="utf-8")
    kb_path = tmp_path / "kb"
    first = ingest_folder(docs, settings, kb_path=kb_path)
    kb = KnowledgeBase(kb_path)
    judgment_chunks = len(kb.chunks("判决.txt"))
    with kb.writer() as writer:  # as a knowledge base built before identity blocks records itself
        writer.set_settings({"passage_text": "title > heading\\ntext"})
    kb.close()
    again = ingest_folder(docs, settings, kb_path=kb_path)
    assert again.count("updated") == 2 and again.chunks == first.chunks
    # The law has no identity block, so its vectors stand; the judgment's later chunks gained one.
    assert again.chunks_embedded == judgment_chunks - 1


def test_small_files_are_embedded_together_with_the_vectors_each_gets_alone(tmp_path, settings, embedder):
    docs, kb_path = tmp_path / "docs", tmp_path / "kb"
    docs.mkdir()
    items = ["投保人应当如实告知被保险人的健康状况", "保险事故发生后被保险人应当及时通知保险人", "保险费可以按年缴纳",
             "人寿保险的受益人由被保险人指定", "财产保险合同转让应当通知保险人", "保险人应当及时作出核定"]
    for n, item in enumerate(items):
        (docs / f"q{n:02d}.txt").write_text(f"{item}，具体以保险合同约定为准。\n", encoding="utf-8")
    slices: list[int] = []
    report = ingest_folder(docs, settings, kb_path=kb_path, on_embedded=slices.append)
    assert slices == [len(items)]  # one embedder call for six one-chunk files, not six calls
    assert [r.source for r in report.results] == sorted(p.name for p in docs.iterdir())
    kb = KnowledgeBase(kb_path)
    ids, vectors = kb.vectors()
    by_id = dict(zip(ids.tolist(), vectors))
    for doc in kb.documents():
        chunk = kb.chunks(doc.source)[0]
        alone = embedder.embed_passages([passage_text(chunk.heading, chunk.text)])[0]
        assert float(alone @ by_id[chunk.id]) > 0.9999, doc.source
    kb.close()
