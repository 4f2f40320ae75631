"""Embeddings from an OpenAI-compatible server (``embedding.backend = "openai"``): this project's API on a loopback
port serves the default embedder; a second configuration embeds through it.

The vectors are the local embedder's (same prefixes, same normalisation), in batches; a knowledge base built
through the server is searched with the local embedder and the other way round, while a model served under
another name is a mismatch naming both; errors name the server and the setting.
"""

from __future__ import annotations

import numpy as np
import pytest

from kbcore.embedding import load_embedder
from kbcore.remote import RemoteError
from tests.app.test_api import serving

KEY = "embed-key-321"
TEXTS = ["第二十二条 供应商参加政府采购活动应当具备下列条件：具有独立承担民事责任的能力。",
         "政府采购信息应当在省级以上人民政府财政部门指定的媒体上发布。", "供应商", "dpkg 是 Debian 的软件包管理程序。",
         "招标人不得向他人透露已获取招标文件的潜在投标人的名称、数量。", "采购人应当按照规定的期限签订合同。",
         "What is the boiling point of mercury?"]
DOC = ("政府采购常用术语\n\n"
       "询价：采购人向三家以上供应商发出询价通知书，让其报价，并从中确定成交供应商的采购方式。\n\n"
       "单一来源采购：只能从唯一供应商处采购的，采购人向该供应商直接采购的采购方式。\n")


@pytest.fixture(scope="module")
def api(tmp_path_factory, settings):
    """The API serving the default embedder, with one knowledge base, ``terms``, built locally."""
    from ingest import ingest_folder

    tmp = tmp_path_factory.mktemp("remote-embed")
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "terms.txt").write_text(DOC, encoding="utf-8")
    served = settings.with_overrides(kb_root=tmp / "kb", api={"preload": False, "api_keys": (KEY,)})
    assert ingest_folder(docs, served, kb_path=tmp / "kb" / "terms").summary()["files_failed"] == 0
    with serving(served) as url:
        yield url, served, docs


def remote(settings, url, **embedding):
    return settings.with_overrides(embedding={"backend": "openai", "base_url": f"{url}/v1", "api_key": KEY,
                                              **embedding})


def test_vectors_from_the_server_are_the_local_embedders(api):
    url, settings, _ = api
    local = load_embedder(settings.embedding, settings.cache_dir)
    through = load_embedder(remote(settings, url, batch_size=3).embedding, settings.cache_dir)
    assert through is load_embedder(remote(settings, url, batch_size=3).embedding, settings.cache_dir)  # one each
    assert (through.model_id, through.dimension) == (local.model_id, local.dimension) == ("multilingual-e5-small", 384)
    got, want = through.embed_passages(TEXTS), local.embed_passages(TEXTS)  # three batches
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.min(np.sum(got * want, axis=1)) > 0.99999
    for text in TEXTS[:3]:  # a question gets the query prefix, as here
        assert float(through.embed_query(text) @ local.embed_query(text)) > 0.99999
    assert through.embed_passages([]).shape == (0, 384)


def test_the_e5_prefixes_are_set_as_for_the_local_embedders(api):
    """The client adds the prefixes (servers embed text as sent); another prefix is another vector."""
    url, settings, _ = api
    local = load_embedder(settings.embedding, settings.cache_dir)
    as_passage = load_embedder(remote(settings, url, query_prefix="passage: ").embedding, settings.cache_dir)
    question = TEXTS[0]
    assert float(as_passage.embed_query(question) @ local.embed_passages([question])[0]) > 0.99999
    assert float(as_passage.embed_query(question) @ local.embed_query(question)) < 0.999


def test_a_knowledge_base_built_through_the_server_is_the_local_one(api, tmp_path):
    """Ingest through the server records the same model and dimension, so the local retriever searches it; the same
    vectors served under another name (a knowledge base's) are refused, naming both."""
    from ingest import ingest_folder
    from kbcore.store import EmbeddingMismatchError, KnowledgeBase
    from retrieval import open_retriever

    url, settings, docs = api
    kb_path = tmp_path / "kb"
    through = remote(settings, url)
    assert ingest_folder(docs, through, kb_path=kb_path).summary()["files_failed"] == 0
    kb = KnowledgeBase(kb_path, readonly=True)
    try:
        assert (kb.embedding_model, kb.dimension) == ("multilingual-e5-small", 384)
    finally:
        kb.close()
    hits = open_retriever(settings, kb_path).search("只能从唯一供应商处采购叫什么？", k=1)
    assert "单一来源采购" in hits[0].text
    renamed = remote(settings, url, model="terms")  # the server embeds with the knowledge base's model
    (docs / "more.txt").write_text("竞争性谈判：采购人与供应商就采购事宜进行谈判。", encoding="utf-8")
    try:
        with pytest.raises(EmbeddingMismatchError, match="multilingual-e5-small.*'terms'"):
            ingest_folder(docs, renamed, kb_path=kb_path)
    finally:
        (docs / "more.txt").unlink()


def test_errors_name_the_server_and_the_embedding_setting(api, local_server):
    url, settings, _ = api
    with pytest.raises(RemoteError, match=r"refused the API key.*embedding.api_key \(or KBCHAT_EMBEDDING__API_KEY\)"):
        load_embedder(remote(settings, url, api_key="wrong").embedding, settings.cache_dir).embed_query("x")
    with pytest.raises(RemoteError, match=r"does not serve the model 'e5-typo'.*it serves: terms.*embedding.model"):
        load_embedder(remote(settings, url, model="e5-typo").embedding, settings.cache_dir).embed_query("x")
    dead = f"http://127.0.0.1:{local_server.free_port()}"
    with pytest.raises(RemoteError, match=rf"cannot reach the server at {dead}/v1 .*embedding.base_url "
                                          r"\(KBCHAT_EMBEDDING__BASE_URL\)"):
        load_embedder(remote(settings, dead).embedding, settings.cache_dir).dimension
