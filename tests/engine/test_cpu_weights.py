"""The int8 CPU kernels: per-token activation scales where one outlier token would flatten a shared scale."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from engine.cpu_weights import PerTokenScaled, quantize_for_cpu


def _relative_error(out, exact):
    return ((out - exact).norm() / exact.norm()).item()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao announces its move to torchao
def test_per_token_scales_keep_ordinary_tokens_accurate_beside_an_outlier_token():
    torch.manual_seed(0)
    mlp = nn.Sequential(OrderedDict(down_proj=nn.Linear(256, 128), up_proj=nn.Linear(256, 256)))
    x = torch.randn(64, 256)
    x[0] *= 300  # one token with massive activations, as the gated MLP activation of real models has
    with torch.no_grad():
        exact = mlp.down_proj(x)
        per_call = quantize_dynamic(copy.deepcopy(mlp), {nn.Linear: per_channel_dynamic_qconfig})
        per_token = quantize_for_cpu(copy.deepcopy(mlp), "int8")
        assert isinstance(per_token.down_proj, PerTokenScaled)
        assert not isinstance(per_token.up_proj, PerTokenScaled)  # only layers fed by the gated activation
        assert not any(isinstance(m, nn.Linear) for m in per_token.modules())
        per_call_error = _relative_error(per_call.down_proj(x)[1:], exact[1:])
        per_token_error = _relative_error(per_token.down_proj(x)[1:], exact[1:])
    assert per_token_error < 0.02
    assert per_call_error > 10 * per_token_error
