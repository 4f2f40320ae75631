import multiprocessing
import os

import numpy as np
import pytest

from kbcore.config import StoreSettings
from kbcore.store import (INDEX_FILE, EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseBusyError,
                          KnowledgeBaseError, NewChunk)


def unit(rng, n, dim=8):
    v = rng.standard_normal((n, dim)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunks(n, prefix):
    return [NewChunk(ordinal=i, page_start=i + 1, page_end=i + 1, heading="h", text=f"{prefix} {i}",
                     tokens=f"{prefix} t{i}") for i in range(n)]


# Every backend must pass the same tests: the local FAISS index (flat, and HNSW, which cannot remove vectors and
# skips deleted ones), Milvus Lite inside this process, and a Milvus server reached by URL (Milvus Lite's own
# server, in another process: the code path a Milvus cluster takes).
BACKENDS = {"local": StoreSettings(), "local-hnsw": StoreSettings(index="hnsw"),
            "milvus": StoreSettings(backend="milvus"), "milvus-server": None}


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory):
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from pymilvus import MilvusClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = Path(sys.executable).with_name("milvus-lite")
    server = subprocess.Popen([str(command), "server", "--data-dir", str(tmp_path_factory.mktemp("milvus")),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            MilvusClient(uri=uri, timeout=2).list_collections()
            break
        except Exception:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()[-3000:]
            time.sleep(0.3)
    yield uri
    server.terminate()
    server.wait(10)


@pytest.fixture(params=list(BACKENDS))
def kb(request, tmp_path):
    store = BACKENDS[request.param]
    if request.param == "milvus-server":
        store = StoreSettings(backend="milvus", uri=request.getfixturevalue("milvus_server_uri"))
    return KnowledgeBase.create(tmp_path / "kb", embedding_model="test-model", dimension=8, store=store)


@pytest.fixture
def local_kb(tmp_path):
    """For what only the local index file has (its format, its type checks)."""
    return KnowledgeBase.create(tmp_path / "kb", embedding_model="test-model", dimension=8)


def reopen(kb, **kwargs):
    return KnowledgeBase(kb.path, store=kb.store_settings, **kwargs)


def test_replacing_a_document_removes_its_old_chunks_from_search(kb):
    rng = np.random.default_rng(0)
    old = unit(rng, 3)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=3, chunks=chunks(3, "old"), vectors=old)
        w.put_document("b.pdf", content_hash="2", title="B", pages=2, chunks=chunks(2, "b"), vectors=unit(rng, 2))
    old_ids = {c.id for c in kb.chunks("a.pdf")}
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="3", title="A", pages=1, chunks=chunks(1, "new"), vectors=unit(rng, 1))
    assert [c.text for c in kb.chunks("a.pdf")] == ["new 0"]
    found = {cid for cid, _ in kb.dense_search(old[0], k=10)}
    assert not found & old_ids
    assert kb.document("a.pdf").content_hash == "3"
    # A fresh reader sees the same thing through the index file on disk.
    again = reopen(kb, readonly=True)
    assert {cid for cid, _ in again.dense_search(old[0], k=10)} == found


def test_deleted_document_is_gone_and_ids_are_never_reused(kb):
    rng = np.random.default_rng(1)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=1, chunks=chunks(2, "a"), vectors=unit(rng, 2))
    first_ids = {c.id for c in kb.chunks()}
    with kb.writer() as w:
        assert w.delete_document("a.pdf")
        assert not w.delete_document("a.pdf")
        w.put_document("c.pdf", content_hash="2", title="C", pages=1, chunks=chunks(2, "c"), vectors=unit(rng, 2))
    assert kb.document("a.pdf") is None
    assert not first_ids & {c.id for c in kb.chunks()}
    assert len(kb.dense_search(unit(rng, 1)[0], k=10)) == 2


def test_stale_or_broken_index_file_is_rebuilt_from_the_database(local_kb):
    kb = local_kb
    rng = np.random.default_rng(2)
    vecs = unit(rng, 4)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=4, chunks=chunks(4, "a"), vectors=vecs)
    expected = kb.dense_search(vecs[2], k=4)
    (kb.path / INDEX_FILE).write_bytes(b"garbage cut short")  # as if a kill hit mid-write
    assert KnowledgeBase(kb.path).dense_search(vecs[2], k=4) == expected


def test_search_restricted_to_documents_and_dense_scores(kb):
    rng = np.random.default_rng(3)
    va, vb = unit(rng, 2), unit(rng, 2)
    with kb.writer() as w:
        a = w.put_document("a.pdf", content_hash="1", title="A", pages=2, chunks=chunks(2, "a"), vectors=va)
        w.put_document("b.pdf", content_hash="2", title="B", pages=2, chunks=chunks(2, "b"), vectors=vb)
    hits = kb.dense_search(vb[0], k=4, document_ids=[a])
    assert {kb.get_chunks([cid])[cid].source for cid, _ in hits} == {"a.pdf"}
    ids = [c.id for c in kb.chunks("b.pdf")]
    assert np.allclose(kb.dense_scores(vb[0], ids), vb @ vb[0], atol=1e-6)


def test_vector_count_mismatch_is_refused_and_nothing_changes(kb):
    with pytest.raises(ValueError, match="a.pdf"):
        with kb.writer() as w:
            w.put_document("a.pdf", content_hash="1", title="A", pages=1, chunks=chunks(2, "a"),
                           vectors=np.zeros((1, 8), "float32"))
    assert kb.documents() == []


def test_embedding_mismatch_names_both_models_and_the_fix(local_kb):
    kb = local_kb
    with pytest.raises(EmbeddingMismatchError, match=r"test-model.*other-model.*--rebuild"):
        KnowledgeBase.create(kb.path, embedding_model="other-model", dimension=8)


def test_replace_vectors_swaps_model_and_search_uses_new_vectors(kb):
    rng = np.random.default_rng(4)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=3, chunks=chunks(3, "a"), vectors=unit(rng, 3))
    ids = [c.id for c in kb.chunks()]
    kb.dense_search(unit(rng, 1)[0], k=1)
    new = unit(rng, 3, dim=8)
    with kb.writer() as w:
        w.replace_vectors("model-2", 8, dict(zip(ids, new)))
    kb.check_embedding("model-2", 8)
    assert reopen(kb).dense_search(new[1], k=1)[0][0] == ids[1]


def test_missing_knowledge_base_is_a_clear_error(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="python -m ingest"):
        KnowledgeBase(tmp_path / "nothing")


def _hold_writer(path, ready, release):
    kb = KnowledgeBase(path)
    with kb.writer():
        ready.set()
        release.wait(10)


def test_second_writer_is_refused_while_the_first_writes(local_kb):
    kb = local_kb
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_writer, args=(str(kb.path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(KnowledgeBaseBusyError, match=f"pid {holder.pid}"):
            with kb.writer(wait_seconds=0.3):
                pass
    finally:
        release.set()
        holder.join(10)
    with kb.writer(wait_seconds=5):  # free again once the first writer is done
        pass
    assert os.path.exists(kb.path / "lock")


def test_a_writer_refuses_a_knowledge_base_deleted_or_replaced_while_open(local_kb):
    """Writers hold the lock only to write (an ingest parses without it), so the folder may be renamed away (the
    app deletes a knowledge base so) or replaced while one is open: its next write says so, it writes nowhere."""
    kb = local_kb
    path = kb.path
    os.rename(path, path.with_name("hidden"))
    with pytest.raises(KnowledgeBaseError, match="gone"):
        with kb.writer():
            pass
    KnowledgeBase.create(path, embedding_model="test-model", dimension=8).close()  # a new one in its place
    with pytest.raises(KnowledgeBaseError, match="deleted or replaced"):
        with kb.writer():
            pass
    kb.close()


def test_a_write_session_may_leave_the_index_to_the_next(local_kb):
    kb = local_kb
    rng = np.random.default_rng(0)
    with kb.writer(catch_up_index=False) as w:
        w.put_document("a.pdf", content_hash="a", title="A", pages=1, chunks=chunks(3, "a"), vectors=unit(rng, 3))
    assert not (kb.path / INDEX_FILE).exists()  # behind the database: caught up later, never trusted as it is
    assert sorted(i for i, _ in kb.dense_search(unit(rng, 1)[0], k=5)) == list(kb.vectors()[0])
    assert kb.document("a.pdf").chunks == 3 and kb.document("b.pdf") is None


def test_recorded_settings_change_in_one_transaction(local_kb):
    kb = local_kb
    with kb.writer() as w:
        w.set_settings({"chunk_size": 200, "tokenizer_version": "v2"})
    assert kb.settings()["chunk_size"] == "200" and kb.settings()["tokenizer_version"] == "v2"
    assert kb.embedding_model == "test-model"


def _index_of_another_kind(kb, kind, vecs, ids):
    """What a hostile or careless hand could leave as vectors.faiss."""
    import faiss

    path = kb.path / INDEX_FILE
    path.unlink(missing_ok=True)
    if kind == "plain faiss file, HNSW":  # the format before, of another index type: AttributeError on search
        index = faiss.IndexHNSWFlat(8, 16)
        index.add(vecs)
        faiss.write_index(index, str(path))
    elif kind == "our format, L2 metric":
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(8))
        index.add_with_ids(-vecs, ids)  # the nearest in L2 would be the farthest by inner product
        kb._index._write(kb, index, "0")
    elif kind == "our format, wrong epoch":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
        index.add_with_ids(-vecs, ids)
        kb._index._write(kb, index, "7")
    elif kind == "our format, another knowledge base":  # even with the same vectors at these ids: not trusted
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
        index.add_with_ids(vecs, ids)
        other = KnowledgeBase.create(kb.path.parent / "other", embedding_model="test-model", dimension=8)
        other._index._write(kb, index, "0")
        (kb.path / INDEX_FILE).write_bytes((kb.path / INDEX_FILE).read_bytes().replace(
            kb.kb_id.encode(), other.kb_id.encode()))
    elif kind == "our format, other vectors":  # right epoch and knowledge base, but not the stored vectors
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
        index.add_with_ids(-vecs, ids)
        kb._index._write(kb, index, "0")
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "FIFO":
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["plain faiss file, HNSW", "our format, L2 metric", "our format, wrong epoch",
                                  "our format, another knowledge base", "our format, other vectors",
                                  "link to /dev/zero", "FIFO"])
def test_an_index_file_of_the_wrong_type_is_rebuilt_not_trusted(local_kb, kind):
    kb = local_kb
    rng = np.random.default_rng(6)
    vecs = unit(rng, 4)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=4, chunks=chunks(4, "a"), vectors=vecs)
    ids = np.array([c.id for c in kb.chunks()], dtype=np.int64)
    expected = kb.dense_search(vecs[2], k=4)
    _index_of_another_kind(kb, kind, vecs, ids)
    for readonly in (True, False):  # a reader never blocks on a FIFO or trusts the file; a writer replaces it
        assert KnowledgeBase(kb.path, readonly=readonly).dense_search(vecs[2], k=4) == expected
    assert (kb.path / INDEX_FILE).is_file() and not (kb.path / INDEX_FILE).is_symlink()
    assert f"kb {kb.kb_id}\n".encode() in (kb.path / INDEX_FILE).read_bytes()[:100]  # rewritten by the writer


def test_an_index_built_from_the_old_vectors_during_re_embedding_is_not_trusted_after(local_kb):
    kb = local_kb
    rng = np.random.default_rng(7)
    old = unit(rng, 3)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=3, chunks=chunks(3, "a"), vectors=old)
    ids = [c.id for c in kb.chunks()]
    # A reader opened while --rebuild runs builds its index from the old vectors and writes it after the commit.
    late_write = (kb.path / INDEX_FILE).read_bytes()
    new = unit(rng, 3)
    with kb.writer() as w:
        w.replace_vectors("model-2", 8, dict(zip(ids, new)))
    (kb.path / INDEX_FILE).write_bytes(late_write)
    reader = KnowledgeBase(kb.path, readonly=True)
    assert [i for i, _ in reader.dense_search(new[1], k=1)] == [ids[1]]
    assert np.allclose(reader.dense_scores(new[1], ids), new @ new[1], atol=1e-6)


def test_search_tokens_after_gives_every_id_and_the_tokens_of_newer_chunks(local_kb):
    kb = local_kb
    rng = np.random.default_rng(3)
    with kb.writer() as w:
        w.put_document("a.pdf", content_hash="1", title="A", pages=3, chunks=chunks(3, "a"), vectors=unit(rng, 3))
    ids, added, tokens = kb.search_tokens_after(0)
    assert list(ids) == list(added) and tokens == ["a t0", "a t1", "a t2"]
    last = int(ids.max())
    with kb.writer() as w:  # a replaced document: its chunks get new ids, above every earlier one
        w.put_document("a.pdf", content_hash="2", title="A", pages=1, chunks=chunks(1, "b"), vectors=unit(rng, 1))
    ids, added, tokens = kb.search_tokens_after(last)
    assert list(ids) == list(added) and added[0] > last and tokens == ["b t0"]
    newest = int(added[0])
    ids, added, tokens = kb.search_tokens_after(newest)
    assert list(ids) == [newest] and len(added) == 0 and tokens == []
