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
    rows = state.ingest_uploads([("x.exe", b"MZ")], settings, tmp_path / "kb")
    assert rows == [{"file": "x.exe", "status": "failed", "reason": rows[0]["reason"], "pages": 0, "chunks": 0}]
    assert "unsupported" in rows[0]["reason"]
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
    assert state.files_on_disk(str(tmp_path)) == [("a.txt", "甲".encode())]
    assert state.files_on_disk(str(tmp_path / "a.txt")) == [("a.txt", "甲".encode())]
    with pytest.raises(state.AppInputError, match="no supported files"):
        state.files_on_disk(str(tmp_path / "b.bin"))
