"""The app's file handling: names, sizes and paths that must never escape the knowledge-base folder."""

from __future__ import annotations

import pytest

from app import state


def test_save_upload_keeps_files_inside_the_kb_folder(tmp_path):
    files = tmp_path / "kb" / "a" / "files"
    for hostile in ("../../evil.txt", "/etc/evil.txt", "..\\..\\evil.txt", "sub/../../evil.txt", ".evil.txt"):
        saved = state.save_upload(files, hostile, b"hello")
        assert saved.parent == files.resolve() and saved.name == "evil.txt"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["evil.txt"]


def test_save_upload_refuses_big_and_unsupported_files(tmp_path):
    with pytest.raises(state.AppInputError, match="over the 1 MB limit"):
        state.save_upload(tmp_path, "big.pdf", b"x" * (2 * 2**20), max_bytes=2**20)
    with pytest.raises(state.AppInputError, match="unsupported file type"):
        state.save_upload(tmp_path, "tool.exe", b"MZ")
    assert list(tmp_path.iterdir()) == []


def test_reupload_replaces_the_stored_file(tmp_path):
    state.save_upload(tmp_path, "a.md", b"one")
    state.save_upload(tmp_path, "a.md", b"two")
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [("a.md", b"two")]


def test_rejected_uploads_become_failed_rows_without_ingesting(tmp_path, settings):
    # The second upload was refused before it reached ingest_uploads (the app passes the error in its place).
    too_big = state.AppInputError("file is 3.0 MB, over the 1 MB limit")
    rows = state.ingest_uploads([("x.exe", b"MZ"), ("../报告.PDF", too_big)], settings, tmp_path / "kb")
    assert rows == [
        {"file": "x.exe", "status": "failed", "pages": 0, "chunks": 0,
         "reason": "unsupported file type (supported: .pdf, .txt, .md, .markdown, .html, .htm, .docx, .xlsx, .pptx, .png, "
                   ".jpg, .jpeg, .tif, .tiff)"},
        {"file": "报告.pdf", "status": "failed", "reason": "file is 3.0 MB, over the 1 MB limit", "pages": 0, "chunks": 0},
    ]
    assert not (tmp_path / "kb" / "kb.sqlite").exists()


def test_list_kbs_puts_the_default_first(tmp_path):
    assert state.list_kbs(tmp_path / "missing", "default") == ["default"]
    for name in ("b", "a", ".hidden", "default"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.md").write_text("x")
    assert state.list_kbs(tmp_path, "default") == ["default", "a", "b"]
    assert state.create_kb_folder(tmp_path, " new kb/.. ") == "new-kb"
    assert (tmp_path / "new-kb" / "files").is_dir()


def test_files_on_disk_reads_a_file_or_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("甲")
    (tmp_path / "b.bin").write_bytes(b"\0")
    (tmp_path / ".c.md").write_text("hidden")
    assert state.files_on_disk(str(tmp_path), [tmp_path]) == [("a.txt", "甲".encode())]
    assert state.files_on_disk(str(tmp_path / "a.txt"), [tmp_path]) == [("a.txt", "甲".encode())]
    with pytest.raises(state.AppInputError, match="no supported files"):
        state.files_on_disk(str(tmp_path / "b.bin"), [tmp_path])


def test_files_on_disk_reads_only_inside_the_allowed_folders(tmp_path):
    import os

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("甲")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    (docs / "etc").symlink_to("/etc")
    os.mkfifo(docs / "pipe.txt")
    with pytest.raises(state.AppInputError, match="off; an operator can allow folders"):
        state.files_on_disk(str(docs))  # none allowed: the default
    for outside in ("/etc/passwd", "/etc", str(docs / ".." / ".." / "x"), str(docs / "passwd.txt"), str(docs / "etc")):
        with pytest.raises(state.AppInputError, match="outside the folders this app may read|neither"):
            state.files_on_disk(outside, [docs])
    found = dict(state.files_on_disk(str(docs), [docs]))
    assert found["a.txt"] == "甲".encode()
    assert "symbolic link" in str(found["passwd.txt"]) and "regular file" in str(found["pipe.txt"])


def test_files_on_disk_checks_the_size_before_reading(tmp_path):
    import time

    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate(4 * 2**30)  # sparse: reading it would take seconds and 4 GB of memory
    started = time.perf_counter()
    [(name, error)] = state.files_on_disk(str(big), [tmp_path], max_bytes=2**20)
    assert time.perf_counter() - started < 1.0
    assert name == "big.txt" and str(error) == "file is 4096.0 MB, over the 1 MB limit"


def test_stored_copies_belong_to_app_documents_only(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("upload")
    assert state.stored_copy(tmp_path, "a.txt") == (files / "a.txt").resolve()
    assert state.stored_copy(tmp_path, "sub/a.txt") is None  # a command-line document of the same file name
    assert state.stored_copy(tmp_path, "../files/a.txt") is None
