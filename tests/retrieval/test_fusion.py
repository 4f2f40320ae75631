import pytest

from retrieval.fusion import lexical_share, rrf, weighted


def test_rrf_rewards_agreement_and_ignores_score_scale():
    dense = [(1, 0.91), (2, 0.90), (3, 0.89)]
    lexical = [(3, 40.0), (4, 30.0), (1, 1.0)]
    fused = rrf([dense, lexical], k=60)
    assert [cid for cid, _ in fused][:2] in ([1, 3], [3, 1])
    assert fused[0][1] == 1 / 61 + 1 / 63
    # Scaling one list's scores changes nothing: only ranks count.
    assert rrf([dense, [(c, s * 1000) for c, s in lexical]], k=60) == fused


def test_weighted_fusion_normalises_each_list():
    fused = dict(weighted([[(1, 0.9), (2, 0.5)], [(2, 100.0), (3, 0.0)]], weights=[0.7, 0.3]))
    assert fused[1] == pytest.approx(0.7) and fused[2] == pytest.approx(0.3) and fused[3] == 0.0


def test_a_peaked_bm25_list_leads_the_fusion_and_a_flat_one_lets_the_embedding_lead():
    dense = [(1, 0.86), (2, 0.80)] + [(10 + i, 0.79 - i / 1000) for i in range(48)]

    def fused_top(lexical):
        share = lexical_share([s for _, s in lexical], 50)
        return weighted([dense, lexical], weights=[1 - share, share], from_zero=[False, True])[0][0]

    # A case number only chunk 2 holds: BM25's best stands far above the rest, and it wins.
    peaked = [(2, 40.0), (1, 6.0)] + [(60 + i, 5.0 - i / 100) for i in range(48)]
    # Everyday words half the corpus shares: BM25's scores are flat, and the embedding's first stays first.
    flat = [(2, 9.0), (1, 8.0)] + [(60 + i, 7.9 - i / 100) for i in range(48)]
    assert lexical_share([s for _, s in peaked], 50) > 0.5 > lexical_share([s for _, s in flat], 50)
    assert fused_top(peaked) == 2 and fused_top(flat) == 1
    # Under fixed weights (the previous default) the flat list would have overruled the embedding.
    assert weighted([dense, flat], weights=[0.4, 0.6])[0][0] == 2


def test_from_zero_keeps_the_last_of_few_matches_above_no_match():
    lexical = [(1, 5.0), (2, 4.0)]
    assert dict(weighted([lexical]))[2] == 0.0  # min-max: the second of two matches counts as no match
    assert dict(weighted([lexical], from_zero=[True]))[2] == pytest.approx(0.8)
