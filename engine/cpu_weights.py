"""CPU weight formats for serving: torch's dynamically quantised fbgemm kernels in place of every ``nn.Linear``.

Decoding on a CPU is bound by the bytes of weight read per token, so int8 weights (a quarter of fp32's bytes)
decode fast, and prompts run on fbgemm's int8 products, faster than float32's (``bench/bench_llm.py --modes
int8,fp32``). NF4 weights, at half of int8's bytes, run on ``engine.nf4_cpu``'s kernels; ``SharedProduct`` and
``fuse_projections`` serve both. Imported only when a model is loaded for the CPU: it needs torch.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

# Sibling projections that always read the same input: each group becomes one matrix (one weight stream and one
# activation quantisation per token instead of three or two).
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Linear layers whose input is the MLP's gated activation. It carries outliers, several times larger than other
# layers' inputs and concentrated in a few tokens, that flatten a scale shared by the whole input.
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
        # max and -min rather than abs().amax(): no |x| copy of a prompt's activations.
        scale = torch.maximum(x.amax(-1, keepdim=True), -x.amin(-1, keepdim=True)).clamp_min(1e-6)
        out = self.linear(x / scale) * scale
        return out if self.bias is None else out + self.bias


class SharedProduct(nn.Module):
    """Several linears of one input computed as one product, their outputs side by side; ``parts`` names their
    widths. Subclasses say how in ``forward``.

    Model code calls the parts one by one (``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)``), so each part is a
    ``FusedPart``: the first part called computes the whole product, the others of the same input take their
    slice of it, and the product is released once every part has had it.
    """

    def __init__(self, parts: list[int]):
        super().__init__()
        self.parts = parts
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._unserved = 0

    def silu_gated(self, x: torch.Tensor) -> torch.Tensor | None:
        """``silu(gate(x)) * up(x)`` for a gate/up pair where a subclass computes it in one pass, else None."""
        return None

    def part(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if x is not self._input or not self._unserved:
            self._input, self._output, self._unserved = x, self(x), len(self.parts)
        out = self._output[..., start:end]
        self._unserved -= 1
        if not self._unserved:
            self._input = self._output = None
        return out


class FusedLinear(SharedProduct):
    """Float linears of one input as one matrix (which ``quantize_for_cpu`` then quantises as one)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__([l.out_features for l in linears])
        has_bias = any(l.bias is not None for l in linears)
        self.linear = nn.Linear(linears[0].in_features, sum(self.parts), bias=has_bias,
                                device="meta")  # no throw-away initialisation of a large matrix
        with torch.no_grad():
            self.linear.weight = nn.Parameter(torch.cat([l.weight for l in linears]), requires_grad=False)
            if has_bias:
                self.linear.bias = nn.Parameter(torch.cat([
                    l.bias if l.bias is not None else l.weight.new_zeros(l.out_features) for l in linears]),
                    requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class FusedPart(nn.Module):
    """One former linear, now columns ``start:end`` of a ``SharedProduct`` it shares with its siblings.

    >>> torch.manual_seed(0) and None
    >>> q, k = nn.Linear(8, 4), nn.Linear(8, 2)
    >>> fused = FusedLinear([q, k])
    >>> x = torch.randn(3, 8)
    >>> torch.allclose(FusedPart(fused, 0, 4)(x), q(x)), torch.allclose(FusedPart(fused, 4, 6)(x), k(x))
    (True, True)
    """

    def __init__(self, fused: SharedProduct, start: int, end: int):
        super().__init__()
        self.fused = fused
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.start, self.end)


def is_float_linear(module: nn.Module | None) -> bool:
    return type(module) is nn.Linear


def fuse_projections(model: nn.Module, fuse: Callable[[list], SharedProduct] = FusedLinear,
                     accepts: Callable[[nn.Module | None], bool] = is_float_linear) -> nn.Module:
    """Replace each ``FUSED_GROUPS`` group of sibling linears that ``accepts`` takes with ``FusedPart``s of one
    ``fuse(linears)``."""
    for parent in list(model.modules()):
        for group in FUSED_GROUPS:
            linears = [getattr(parent, name, None) for name in group]
            if not all(accepts(l) for l in linears):
                continue
            fused = fuse(linears)
            start = 0
            for name, width in zip(group, fused.parts):
                setattr(parent, name, FusedPart(fused, start, start + width))
                start += width
    return model


def fused_linear(module: nn.Module) -> SharedProduct | None:
    """The whole ``SharedProduct`` behind a ``FusedPart`` (for code that wants all parts at once), else None."""
    return module.fused if isinstance(module, FusedPart) else None


def quantize_for_cpu(model: nn.Module, mode: str) -> nn.Module:
    """Swap every ``nn.Linear`` for torch's dynamically quantised CPU kernel (fbgemm), in place.

    ``int8``: per-channel symmetric int8 weights; activations quantised on the fly to 7 bits (torch's
    ``reduce_range`` for fbgemm) with one scale and zero point per call, the inputs of ``OUTLIER_INPUT_LAYERS``
    scaled per token first (``PerTokenScaled``): one scale per call there let a few outlier tokens flatten the
    rest of a prompt, and keeping those layers in fp16 instead prefilled slower (divergence figures in
    bench/README.md). ``fp16``: fp16 weights for all. Both compute in fp32.
    """
    from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if mode not in ("int8", "fp16"):
        raise ValueError(f"CPU kernels are int8 or fp16, not {mode!r}")
    # Per-channel weight scales and one activation scale per call: a fused matrix computes exactly what its
    # parts did, with one weight stream and one activation quantisation per token (bench/bench_llm.py).
    fuse_projections(model)
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
