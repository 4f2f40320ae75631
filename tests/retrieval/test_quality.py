"""Retrieval quality on the development corpus, with the hit rule of ../shared/eval/README.md.

Floors sit a little under what the default configuration measures, so a regression fails here; the measured
numbers and the baselines are in the issue notes and the README.
"""

import pytest

from retrieval import evaluate, load_qa
from retrieval.baseline import TfidfBaseline

pytestmark = pytest.mark.slow

FLOORS = {
    # set name: (hit@1, hit@5, mrr@10) floors for hybrid; measured .986/.993/.991 and .900/.975/.935. The
    # issue's targets are FAQ hit@1 .95 and regulations hit@1 .85 / hit@5 .975; the hit@5 floor leaves one
    # question of room because vectors differ in the last digits between embedding backends.
    "debian-faq": (0.95, 0.99, 0.97),
    "regulations": (0.85, 0.95, 0.90),
}


@pytest.fixture(scope="module")
def scores(eval_retriever, eval_dir):
    out = {}
    baseline = TfidfBaseline(eval_retriever.kb)
    for name in FLOORS:
        items = load_qa(eval_dir / "qa" / f"{name}.jsonl")
        out[name] = {mode: evaluate(lambda q, k, m=mode: eval_retriever.search(q, k, mode=m), items).as_dict()
                     for mode in ("hybrid", "dense", "bm25")}
        out[name]["tfidf"] = evaluate(baseline.search, items).as_dict()
    return out


@pytest.mark.parametrize("name", FLOORS)
def test_hybrid_meets_floors(scores, name):
    hit1, hit5, mrr = FLOORS[name]
    got = scores[name]["hybrid"]
    assert got["hit@1"] >= hit1 and got["hit@5"] >= hit5 and got["mrr@10"] >= mrr, scores[name]


@pytest.mark.parametrize("name", FLOORS)
def test_hybrid_at_least_as_good_as_each_part(scores, name):
    got = scores[name]
    one_question = 1 / got["hybrid"]["n"]  # vectors differ in the last digits between embedding backends
    for part in ("dense", "bm25"):
        assert got["hybrid"]["mrr@10"] >= got[part]["mrr@10"] - one_question, got
        assert got["hybrid"]["hit@5"] >= got[part]["hit@5"] - one_question, got


@pytest.mark.parametrize("name", FLOORS)
def test_hybrid_beats_the_character_bigram_baseline(scores, name):
    got = scores[name]
    assert got["hybrid"]["mrr@10"] > got["tfidf"]["mrr@10"] and got["hybrid"]["hit@5"] >= got["tfidf"]["hit@5"], got
