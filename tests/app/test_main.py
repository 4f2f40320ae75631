"""Drive the real Streamlit app with ``AppTest``: knowledge bases, ingest (good and bad files), documents,
chat with streamed answers, "not in the documents", follow-ups, deletion.

AppTest cannot drive ``st.file_uploader``; the app's "ingest from a path on this machine" box goes through the
same save-and-ingest function as browser uploads, so that is what these tests use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import APP_FILE, assert_quotes_the_kb

TIMEOUT = 300  # first ingest loads the embedder; the slow test loads the real LLM
DOCS = "docs"
PDF = "zfcg-xinxi-fabu-guanli-banfa.pdf"
QUESTION = "同一条政府采购信息在不同媒体上发布的内容或时间不一致时，以哪里发布的为准？"
UNRELATED = "What is the boiling point of mercury at sea level?"


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def show(at: AppTest, view: str) -> AppTest:
    at.radio(key="view").set_value(view)
    return run(at)


def ingest_path(at: AppTest, path: Path) -> AppTest:
    show(at, "Documents / 文档")
    at.text_input(key="ingest_path").input(str(path))
    run(at)
    at.button(key="ingest_path_button").click()
    return run(at)


def ask(at: AppTest, question: str) -> AppTest:
    show(at, "Chat / 问答")
    at.chat_input(key="question").set_value(question)
    return run(at)


def results_table(at: AppTest) -> list[dict]:
    """The per-file ingest results (the first table on the Documents view)."""
    return at.dataframe[0].value.to_dict("records")


def documents_table(at: AppTest) -> list[dict]:
    return at.dataframe[-1].value.to_dict("records")


def assistant_texts(at: AppTest) -> list[str]:
    return [m.markdown[0].value for m in at.chat_message if m.name == "assistant" and len(m.markdown)]


@pytest.fixture
def app(app_env, tiny_llm_dir, monkeypatch):
    monkeypatch.setenv("KBCHAT_LLM__MODEL", str(tiny_llm_dir))
    monkeypatch.setenv("KBCHAT_LLM__QUANTIZATION", "fp32")
    monkeypatch.setenv("KBCHAT_LLM__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("KBCHAT_LLM__TEMPERATURE", "0")  # greedy: the same random-model output every run
    return run(AppTest.from_file(APP_FILE, default_timeout=TIMEOUT))


def test_create_ingest_ask_bad_files_delete(app, app_env, eval_dir, tiny_llm_dir, monkeypatch):
    at = app
    # Without OCR the corpus's scanned-image-only.pdf is one of the bad files (read by OCR: tests/ingest/test_ocr.py).
    monkeypatch.setenv("KBCHAT_INGEST__OCR", "false")
    assert at.selectbox(key="kb_name").options == ["default"]
    # The sidebar offers the configured (tiny) model, selected, before the presets.
    model = at.selectbox(key="model")
    assert model.value == str(tiny_llm_dir)
    assert model.options == [str(tiny_llm_dir), "qwen2.5-0.5b", "qwen2.5-1.5b"]
    # Every weight format of the settings is offered; the configured one is selected.
    assert at.selectbox(key="quantization").value == "fp32"
    assert {"auto", "nf4", "int8", "fp16"} <= set(at.selectbox(key="quantization").options)

    # Create a knowledge base: its name is sanitised and it becomes the current one.
    at.text_input(key="new_kb_name").input("../My Docs!")
    run(at)
    at.button(key="create_kb").click()
    run(at)
    assert at.selectbox(key="kb_name").value == "My-Docs"
    assert set(at.selectbox(key="kb_name").options) == {"default", "My-Docs"}
    assert (app_env / "My-Docs" / "files").is_dir()
    assert [p.name for p in app_env.parent.iterdir() if p.name not in ("kb", "kbchat.toml", "adapters")] == []

    # Asking before anything is ingested says what to do instead of failing.
    ask(at, QUESTION)
    assert any("no documents yet" in w.value for w in at.warning)

    # Ingest one real PDF: result row "added", the file stored inside the kb folder, the document listed.
    ingest_path(at, eval_dir / DOCS / PDF)
    rows = results_table(at)
    assert [(r["file"], r["status"]) for r in rows] == [(PDF, "added")]
    assert rows[0]["pages"] >= 1 and rows[0]["chunks"] >= 1
    assert (app_env / "My-Docs" / "files" / PDF).is_file()
    docs = documents_table(at)
    assert [(d["source"], d["pages"], d["chunks"]) for d in docs] == [(PDF, rows[0]["pages"], rows[0]["chunks"])]

    # The same file again is skipped as unchanged.
    ingest_path(at, eval_dir / DOCS / PDF)
    assert [(r["file"], r["status"], r["reason"]) for r in results_table(at)] == [(PDF, "skipped", "unchanged")]

    # Bad files: each fails with its reason shown, nothing is added, and the app keeps working.
    ingest_path(at, eval_dir / "bad")
    bad = results_table(at)
    assert {r["file"] for r in bad} == {p.name for p in (eval_dir / "bad").iterdir()}
    assert all(r["status"] == "failed" and r["reason"] for r in bad), bad
    errors = [e.value for e in at.error]
    for r in bad:
        assert f"{r['file']}: {r['reason']}" in errors
    assert [d["source"] for d in documents_table(at)] == [PDF]
    assert [p.name for p in (app_env / "My-Docs" / "files").iterdir()] == [PDF]  # failed uploads not kept

    # A path that does not exist is an error message, not a crash.
    ingest_path(at, eval_dir / "no-such-folder")
    assert any("neither a file nor a folder" in e.value for e in at.error)

    # Ask: the (random) model's streamed answer is shown and kept in the history.
    ask(at, QUESTION)
    answers = assistant_texts(at)
    assert len(answers) == 1 and answers[0].strip()
    assert not at.error

    # A follow-up passes the history along: the search joins it to the previous question, and says so.
    ask(at, "那么信息发布应当遵循什么原则呢？")
    assert len(assistant_texts(at)) == 2 and not at.error
    captions = [c.value for c in at.caption]
    assert f"Searched for / 检索: {QUESTION} 那么信息发布应当遵循什么原则呢？" in captions, captions

    # Unrelated question: the honest "not in the documents" answer, no citations.
    ask(at, UNRELATED)
    answers = assistant_texts(at)
    assert len(answers) == 3
    assert "do not contain" in answers[2]
    assert any("Not in the documents" in i.value for i in at.info)

    # The conversation survives switching views; clearing empties it.
    show(at, "Documents / 文档")
    show(at, "Chat / 问答")
    assert len(assistant_texts(at)) == 3
    at.button(key="clear_chat").click()
    run(at)
    assert assistant_texts(at) == []

    # Delete the document: the list empties and the stored upload is gone.
    show(at, "Documents / 文档")
    at.selectbox(key="delete_source").set_value(PDF)
    at.button(key="delete_button").click()
    run(at)
    assert any(f"Deleted {PDF}" in s.value for s in at.success)
    assert any("No documents yet" in i.value for i in at.info)
    assert not (app_env / "My-Docs" / "files" / PDF).exists()


def test_switching_knowledge_bases_keeps_chats_apart(app, app_env, eval_dir):
    at = app
    at.text_input(key="new_kb_name").input("法规 库")
    run(at)
    at.button(key="create_kb").click()
    run(at)
    assert at.selectbox(key="kb_name").value == "法规-库"
    ingest_path(at, eval_dir / DOCS / PDF)
    ask(at, UNRELATED)
    assert len(assistant_texts(at)) == 1
    at.selectbox(key="kb_name").set_value("default")
    run(at)
    assert assistant_texts(at) == []
    show(at, "Documents / 文档")
    assert any("No documents yet" in i.value for i in at.info)


@pytest.mark.slow
def test_real_model_answer_shows_its_citation(app_env, eval_dir, monkeypatch):
    """The default model (int8 on this CPU) answers from the ingested PDF; each citation shows file and page, and its
    expander quotes that passage of the document (what the model cites is the llm package's business; that
    the app shows it faithfully is this test's)."""
    monkeypatch.setenv("KBCHAT_LLM__MAX_NEW_TOKENS", "64")
    monkeypatch.setenv("KBCHAT_LLM__TEMPERATURE", "0")
    at = run(AppTest.from_file(APP_FILE, default_timeout=TIMEOUT))
    ingest_path(at, eval_dir / DOCS / PDF)
    ask(at, QUESTION)
    answers = assistant_texts(at)
    assert len(answers) == 1 and answers[0].strip(), answers
    assert not any("Not in the documents" in i.value for i in at.info)
    cited = [e for e in at.expander if e.label.startswith("[")]
    assert cited, "the answer has no citation"
    for e in cited:
        assert e.label.split("] ", 1)[1].startswith(f"{PDF} · p"), e.label
        quote = e.markdown[0].value
        assert quote.startswith("> ")
        assert_quotes_the_kb(app_env / "default", e.label, quote.removeprefix("> ").replace("\n> ", "\n"))
    assert not at.error


def test_path_ingest_is_confined_and_stored_copies_follow_the_knowledge_base(app, app_env, tmp_path, monkeypatch):
    import hashlib

    from ingest import ingest_files
    from kbcore.config import load_settings
    from kbcore.store import KnowledgeBase

    at = app
    docs, files, kb_path = tmp_path / "docs", app_env / "default" / "files", app_env / "default"
    docs.mkdir()
    good = "# 须知\n\n采购申请由使用部门填写。\n"
    (docs / "a.md").write_text(good, encoding="utf-8")

    # Outside the allowed folders (and through a link that leads outside): refused, nothing read.
    (docs / "passwd.md").symlink_to("/etc/passwd")
    for outside in ("/etc/passwd", "/etc", str(docs / "passwd.md")):
        ingest_path(at, Path(outside))
        assert any("outside the folders this app may read" in e.value for e in at.error), outside
    (docs / "passwd.md").unlink()
    ingest_path(at, docs)
    assert [(r["file"], r["status"]) for r in results_table(at)] == [("a.md", "added")]
    assert (files / "a.md").read_text(encoding="utf-8") == good

    def stored_copy_is_the_kb_version():
        kb = KnowledgeBase(kb_path, readonly=True)
        try:
            return kb.document("a.md").content_hash == hashlib.sha256((files / "a.md").read_bytes()).hexdigest()
        finally:
            kb.close()

    # A re-upload that fails keeps the good stored copy, which still matches the knowledge base's version.
    (docs / "a.md").write_text("# " + "长" * 20_000 + "\n正文。\n", encoding="utf-8")
    ingest_path(at, docs)
    assert results_table(at)[0]["status"] == "failed" and "limits.max_heading_chars" in results_table(at)[0]["reason"]
    assert (files / "a.md").read_text(encoding="utf-8") == good and stored_copy_is_the_kb_version()

    # So does one that meets a busy knowledge base.
    (docs / "a.md").write_text(good + "\n验收合格后付款。\n", encoding="utf-8")
    kb = KnowledgeBase(kb_path)
    with kb.writer():
        ingest_path(at, docs)
    kb.close()
    assert any("being written" in e.value for e in at.error)
    assert (files / "a.md").read_text(encoding="utf-8") == good and stored_copy_is_the_kb_version()
    assert [p.name for p in files.iterdir()] == ["a.md"]  # no staging left behind

    # Deleting the command-line document sub/a.md leaves the upload a.md's stored copy alone.
    (docs / "sub").mkdir()
    (docs / "sub" / "a.md").write_text("# 其他\n\n另一份。\n", encoding="utf-8")
    ingest_files([docs / "sub" / "a.md"], load_settings(), kb_path=kb_path, root=docs)
    show(at, "Documents / 文档")
    at.selectbox(key="delete_source").set_value("sub/a.md")
    at.button(key="delete_button").click()
    run(at)
    assert (files / "a.md").is_file()
    at.selectbox(key="delete_source").set_value("a.md")
    at.button(key="delete_button").click()
    run(at)
    assert not (files / "a.md").exists()

    # With no allowed folders (the default) the app reads nothing from the server's disk.
    monkeypatch.delenv("KBCHAT_APP__ALLOWED_FOLDERS")
    fresh = run(AppTest.from_file(APP_FILE, default_timeout=TIMEOUT))
    ingest_path(fresh, docs)
    assert any("ingesting from a path on the server is off" in e.value for e in fresh.error)


def test_document_text_is_shown_as_text_not_markdown(app, app_env, tmp_path):
    from markdown_it import MarkdownIt

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(
        "# 采购指南\n\n供应商参加政府采购应当具备独立承担民事责任的能力。"
        "![x](http://attacker.example/pixel.png) [点这里](http://attacker.example/) <img src=x> $x$\n",
        encoding="utf-8")
    at = ingest_path(app, docs)
    assert results_table(at)[0]["status"] == "added"
    ask(at, "供应商参加政府采购应当具备什么能力？")
    shown = [m.value for m in at.markdown]
    assert any("attacker" in text for text in shown), shown  # the passage is shown ...
    parser = MarkdownIt("commonmark")
    for text in shown:  # ... but nothing in it becomes a link, an image or HTML
        kinds = {t.type for block in parser.parse(text) for t in (block.children or [])} | \
                {block.type for block in parser.parse(text)}
        assert not kinds & {"image", "link_open", "html_inline", "html_block"}, text
