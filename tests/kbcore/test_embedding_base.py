"""BatchEmbedder: the Embedder methods every backend shares, on a stand-in backend that records its calls."""

import numpy as np

from kbcore.embedding.base import BatchEmbedder, Embedder


class Recording(BatchEmbedder):
    model_id, dimension = "recording", 3

    def __init__(self):
        self.calls = []

    def _embed(self, texts, query):
        self.calls.append((texts, query))
        return np.array([[len(t), float(query), 1.0] for t in texts], dtype=np.float32)


def test_passages_go_as_one_list_and_a_query_alone():
    backend = Recording()
    assert isinstance(backend, Embedder)
    passages = backend.embed_passages(("ab", "cde"))
    assert passages.tolist() == [[2, 0, 1], [3, 0, 1]]
    assert backend.embed_query("four").tolist() == [4, 1, 1]
    assert backend.calls == [(["ab", "cde"], False), (["four"], True)]


def test_no_passages_give_an_empty_matrix_without_a_call():
    backend = Recording()
    empty = backend.embed_passages([])
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    assert backend.calls == []
