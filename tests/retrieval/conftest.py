"""Retrieval tests run on every vector backend: the local FAISS index and Milvus Lite, over the same knowledge base
(kb.sqlite holds the text and vectors; each backend's index is derived from it)."""

import pytest


@pytest.fixture(scope="module", params=["local", "milvus"])
def eval_retriever(request, eval_kb_path, settings):
    from retrieval import open_retriever

    return open_retriever(settings.with_overrides(store={"backend": request.param}), eval_kb_path)


@pytest.fixture(scope="session")
def dev_documents(eval_dir):
    """Real text without a model: eight regulations and the Debian FAQ of ../shared/eval/docs, parsed and cut into
    300-character pieces, as {source: [(text, search tokens joined by spaces), ...]} (about 400 pieces)."""
    from ingest.parse import parse_file
    from kbcore.text import search_tokens

    paths = sorted((eval_dir / "docs").glob("zfcg-*.pdf"))[:8] + [eval_dir / "docs" / "debian-faq-zh-cn.pdf"]
    documents = {}
    for path in paths:
        text = "\n".join(page.text for page in parse_file(path).pages)
        pieces = [text[i:i + 300] for i in range(0, len(text), 300)]
        documents[path.name] = [(piece, " ".join(search_tokens(piece))) for piece in pieces]
    return documents
