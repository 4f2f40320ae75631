"""The derived vector index as the knowledge base grows and shrinks: flat below a size, HNSW above it, caught up
rather than rebuilt, and Milvus kept from returning what the database no longer holds."""

import numpy as np
import pytest

from kbcore.config import StoreSettings, load_settings
from kbcore.store import INDEX_FILE, KnowledgeBase, NewChunk
from kbcore.vectors import FaissIndex

DIM = 32


def embedding_like(rng, n, centres=40):
    """Unit vectors around a few dozen centres, as real embeddings cluster by topic (HNSW finds uniform random
    vectors harder and clustered ones easier; recall is only meaningful on the latter)."""
    base = rng.standard_normal((centres, DIM)).astype("float32")
    v = base[rng.integers(centres, size=n)] + 0.6 * rng.standard_normal((n, DIM)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def put(writer, source, vecs):
    chunks = [NewChunk(ordinal=i, page_start=1, page_end=1, heading="", text=f"{source} {i}") for i in range(len(vecs))]
    return writer.put_document(source, content_hash=source, title="", pages=1, chunks=chunks, vectors=vecs)


@pytest.fixture
def count_builds(monkeypatch):
    """How many indexes were made from scratch (FaissIndex._new) since the last reset."""
    calls = []
    original = FaissIndex._new

    def spy(self, dim, kind):
        calls.append(kind)
        return original(self, dim, kind)

    monkeypatch.setattr(FaissIndex, "_new", spy)
    return calls


def test_auto_index_is_flat_below_the_threshold_and_hnsw_above_with_recall_against_exact(tmp_path):
    rng = np.random.default_rng(0)
    store = StoreSettings(hnsw_threshold=1000)
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=store)
    vecs = embedding_like(rng, 3000)
    with kb.writer() as w:
        put(w, "small.pdf", vecs[:500])
    assert kb.index_info()["kind"] == "flat"
    with kb.writer() as w:
        for d in range(5):
            put(w, f"doc{d}.pdf", vecs[500 + 500 * d: 1000 + 500 * d])
    assert kb.index_info()["kind"] == "hnsw"
    reader = KnowledgeBase(kb.path, readonly=True, store=store)
    exact = KnowledgeBase(kb.path, readonly=True, store=StoreSettings(index="flat"))
    queries = embedding_like(np.random.default_rng(1), 100)
    recall = np.mean([len({i for i, _ in reader.dense_search(q, 10)} & {i for i, _ in exact.dense_search(q, 10)}) / 10
                      for q in queries])
    assert reader.index_info()["kind"] == "hnsw" and recall >= 0.98
    # The scores are inner products, as from the exact index.
    q = queries[0]
    assert reader.dense_search(q, 1)[0][1] == pytest.approx(exact.dense_search(q, 1)[0][1], abs=1e-5)


def test_adding_to_an_hnsw_index_catches_it_up_without_rebuilding(tmp_path, count_builds):
    rng = np.random.default_rng(2)
    store = StoreSettings(index="hnsw")
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=store)
    vecs = embedding_like(rng, 1200)
    with kb.writer() as w:
        put(w, "a.pdf", vecs[:1000])
    assert count_builds == ["hnsw"]
    with kb.writer() as w:
        put(w, "b.pdf", vecs[1000:])
    assert count_builds == ["hnsw"]  # added to the graph in memory, and the file rewritten
    new_ids = {c.id for c in kb.chunks("b.pdf")}
    assert kb.dense_search(vecs[1100], 1)[0][0] in new_ids
    # Another process's index file is caught up the same way: it is loaded, not rebuilt.
    reader = KnowledgeBase(kb.path, readonly=True, store=store)
    assert reader.dense_search(vecs[1100], 1)[0][0] in new_ids and count_builds == ["hnsw"]


def test_deleted_chunks_are_skipped_by_hnsw_then_the_graph_is_rebuilt_when_they_pile_up(tmp_path, count_builds):
    rng = np.random.default_rng(3)
    store = StoreSettings(index="hnsw")
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=store)
    vecs = embedding_like(rng, 1000)
    with kb.writer() as w:
        for d in range(10):
            put(w, f"doc{d}.pdf", vecs[100 * d: 100 * d + 100])
    gone = {c.id for c in kb.chunks("doc0.pdf")}
    with kb.writer() as w:
        w.delete_document("doc0.pdf")  # 10 % of the graph: kept, skipped
    assert count_builds == ["hnsw"] and len(kb._index.dead) == 100
    for q in vecs[:100:10]:
        found = {i for i, _ in kb.dense_search(q, 50)}
        assert len(found) == 50 and not found & gone
    reader = KnowledgeBase(kb.path, readonly=True, store=store)
    assert not {i for i, _ in reader.dense_search(vecs[5], 50)} & gone
    with kb.writer() as w:
        w.delete_document("doc1.pdf")
        w.delete_document("doc2.pdf")  # now 30 % dead: rebuilt once, for the whole batch
    assert count_builds == ["hnsw", "hnsw"] and len(kb._index.dead) == 0 and kb._index.index.ntotal == 700


def test_the_auto_index_goes_back_to_flat_only_below_half_the_threshold(tmp_path):
    rng = np.random.default_rng(4)
    store = StoreSettings(hnsw_threshold=400)
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=store)
    vecs = embedding_like(rng, 400)
    with kb.writer() as w:
        for d in range(4):
            put(w, f"doc{d}.pdf", vecs[100 * d: 100 * d + 100])
    assert kb.index_info()["kind"] == "hnsw"
    with kb.writer() as w:
        w.delete_document("doc0.pdf")  # 300 >= 200: stays HNSW
    assert kb.index_info()["kind"] == "hnsw"
    with kb.writer() as w:
        w.delete_document("doc1.pdf")
        w.delete_document("doc2.pdf")  # 100 < 200: flat
    assert kb.index_info()["kind"] == "flat"
    assert KnowledgeBase(kb.path, readonly=True, store=store).index_info()["kind"] == "flat"


def test_an_index_file_of_the_other_type_than_configured_is_rebuilt(tmp_path):
    rng = np.random.default_rng(5)
    vecs = embedding_like(rng, 300)
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=StoreSettings(index="hnsw"))
    with kb.writer() as w:
        put(w, "a.pdf", vecs)
    assert kb.index_info()["kind"] == "hnsw"
    flat = KnowledgeBase(kb.path, store=StoreSettings(index="flat"))
    assert flat.index_info()["kind"] == "flat"
    assert (kb.path / INDEX_FILE).is_file() and KnowledgeBase(kb.path, store=StoreSettings()).index_info()["kind"] == "flat"


def test_opened_without_store_settings_a_knowledge_base_uses_those_it_was_written_with(tmp_path, monkeypatch):
    from ingest import delete_document
    from kbcore.milvus import MilvusIndex

    rng = np.random.default_rng(8)
    milvus = StoreSettings(backend="milvus", index="flat")
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=milvus)
    vecs = embedding_like(rng, 40)
    with kb.writer() as w:
        put(w, "a.pdf", vecs[:20])
        put(w, "b.pdf", vecs[20:])
    assert KnowledgeBase(kb.path).store_settings == milvus
    monkeypatch.setattr(MilvusIndex, "_reconcile", lambda *a: pytest.fail("Milvus was not kept in step"))
    assert delete_document(kb.path, "a.pdf")  # as the app and `python -m ingest --delete` call it
    assert len(KnowledgeBase(kb.path, store=milvus).dense_search(vecs[0], 40)) == 20
    assert not (kb.path / INDEX_FILE).exists()  # no local index was built beside it


def test_store_settings_come_from_the_environment():
    s = load_settings(env={"KBCHAT_STORE__BACKEND": "milvus", "KBCHAT_STORE__URI": "http://milvus:19530",
                           "KBCHAT_STORE__INDEX": "hnsw", "KBCHAT_STORE__HNSW_THRESHOLD": "1000"},
                      use_default_file=False)
    assert (s.store.backend, s.store.uri, s.store.index, s.store.hnsw_threshold) == (
        "milvus", "http://milvus:19530", "hnsw", 1000)
    with pytest.raises(ValueError, match="index"):
        load_settings(env={"KBCHAT_STORE__INDEX": "ivf"}, use_default_file=False)


def test_milvus_never_returns_a_chunk_deleted_while_it_could_not_be_kept_in_step(tmp_path):
    rng = np.random.default_rng(6)
    milvus = StoreSettings(backend="milvus")
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=milvus)
    vecs = embedding_like(rng, 200)
    with kb.writer() as w:
        put(w, "a.pdf", vecs[:100])
        put(w, "b.pdf", vecs[100:])
    gone = {c.id for c in kb.chunks("a.pdf")}
    # A process configured for the local index deletes a.pdf: Milvus is not told.
    local = KnowledgeBase(kb.path, store=StoreSettings())
    with local.writer() as w:
        w.delete_document("a.pdf")
        # While that writer holds the lock, a Milvus reader cannot reconcile; it must still drop what is gone.
        reader = KnowledgeBase(kb.path, store=milvus)
        found = {i for i, _ in reader.dense_search(vecs[0], 20)}
        assert found and not found & gone
    # Once the lock is free, the next reader reconciles the collection with the database.
    again = KnowledgeBase(kb.path, store=milvus)
    assert len(again.dense_search(vecs[0], 500)) == 100
    assert not again._index._held_ids().tolist() != sorted(c.id for c in again.chunks())


def test_milvus_is_kept_in_step_by_each_write_without_listing_the_collection(tmp_path, monkeypatch):
    from kbcore.milvus import MilvusIndex

    listed = []
    original = MilvusIndex._held_ids
    monkeypatch.setattr(MilvusIndex, "_held_ids", lambda self: listed.append(1) or original(self))
    rng = np.random.default_rng(7)
    milvus = StoreSettings(backend="milvus")
    kb = KnowledgeBase.create(tmp_path / "kb", embedding_model="m", dimension=DIM, store=milvus)
    vecs = embedding_like(rng, 60)
    with kb.writer() as w:
        put(w, "a.pdf", vecs[:30])
        put(w, "b.pdf", vecs[30:])
    with kb.writer() as w:
        put(w, "a.pdf", vecs[:10])
        w.delete_document("b.pdf")
    assert listed == [] and kb._index._state() == (kb._vectors_epoch(), kb.generation)
    assert sorted(i for i, _ in KnowledgeBase(kb.path, store=milvus).dense_search(vecs[0], 100)) == sorted(
        c.id for c in kb.chunks())
