"""CPU weight formats for serving: torch's dynamically quantised fbgemm kernels in place of every ``nn.Linear``.

Decoding on a CPU is bound by the bytes of weight read per token, so int8 weights (a quarter of fp32's bytes)
decode fastest; bitsandbytes' 4-bit CPU kernels were 8x slower here (see ``LLMSettings.quantization``).
Imported only when a model is loaded for the CPU: it needs torch.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# Linear layers whose input is the MLP's gated activation. It carries outliers (up to 565 in Qwen2.5-0.5B, under
# 180 elsewhere), concentrated in a few tokens, that flatten a scale shared by the whole input.
OUTLIER_INPUT_LAYERS = ("down_proj", "fc2", "w2", "dense_4h_to_h")


class PerTokenScaled(nn.Module):
    """``linear(x)`` computed as ``linear(x / s) * s``, ``s`` being each token's largest absolute activation.

    torch's dynamic int8 kernel quantises its whole input with one scale per call, so a single outlier token
    leaves the other tokens of a prompt a handful of int8 levels. Scaled to [-1, 1] token by token first, every
    token uses the full range: per-token activation scales for the price of a max and two elementwise products.
    The wrapped linear has no bias (it is added after), which keeps this exact in real arithmetic.

    >>> torch.manual_seed(0) and None
    >>> layer, x = nn.Linear(8, 3), torch.randn(5, 8)
    >>> torch.allclose(PerTokenScaled(layer)(x), layer(x), atol=1e-6)
    True
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = nn.Linear(linear.in_features, linear.out_features, bias=False)
        self.linear.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max and -min rather than abs().amax(): no |x| copy of a prompt's activations (0.7 against 1.6 ms
        # per layer for 952 tokens).
        scale = torch.maximum(x.amax(-1, keepdim=True), -x.amin(-1, keepdim=True)).clamp_min(1e-6)
        out = self.linear(x / scale) * scale
        return out if self.bias is None else out + self.bias


def quantize_for_cpu(model: nn.Module, mode: str) -> nn.Module:
    """Swap every ``nn.Linear`` for torch's dynamically quantised CPU kernel (fbgemm), in place.

    ``int8``: per-channel int8 weights, activations quantised on the fly, with per-token scales for
    ``OUTLIER_INPUT_LAYERS``. On a 952-token grounded prompt (bench_llm's) for Qwen2.5-0.5B, KL to fp32 over the
    last 400 positions was 0.85 with one scale per call there, 0.090 with per-token scales, 0.072 with those
    layers kept in fp16 (the previous choice, 20% slower to prefill); bitsandbytes NF4 measured 0.10.
    ``fp16``: fp16 weights for all. Both compute in fp32.
    """
    from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if mode not in ("int8", "fp16"):
        raise ValueError(f"CPU kernels are int8 or fp16, not {mode!r}")
    if mode == "int8":
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear) and name in OUTLIER_INPUT_LAYERS:
                    setattr(parent, name, PerTokenScaled(child))
    qconfig = float16_dynamic_qconfig if mode == "fp16" else per_channel_dynamic_qconfig
    spec = {name: qconfig for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    with warnings.catch_warnings():  # torch.ao's eager quantisation announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, inplace=True)
