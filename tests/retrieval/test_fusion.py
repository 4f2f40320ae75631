import pytest

from retrieval.fusion import rrf, weighted


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
