"""bitsandbytes NF4 weights served on a CPU by our own kernels (``engine/csrc/nf4_kernel.c``; AVX2 and FMA).

bitsandbytes' own CPU 4-bit layers have no fast kernel without AVX512, yet decoding reads every weight once per
token, so the smallest weights should be the fastest (``bench/bench_llm.py --modes nf4,nf4-bnb`` compares the
two). ``NF4Linear`` keeps bitsandbytes' quantised weights (NF4 codes, double-quantised absmax, blocks of 64) and
multiplies them in C (``engine.native``: compiled once with the system's C compiler). Exactly what is computed:

- Weights: bitsandbytes' NF4 in every layer bitsandbytes quantised, and in the output layer too, which
  bitsandbytes keeps in float (``use_nf4_kernel`` quantises it the same way).
- Prompt kernel, for float32 calls of ``PROMPT_KERNEL_TOKENS`` tokens or more with a multiple of 8 output rows
  (prompts): NF4 values rounded to 8-bit integers in [-63, 63] times the input quantised to 7 bits (0..127, with
  a zero point) per token and block of 64, summed in integers per block, then scaled in float32. On AVX512-VNNI
  CPUs other instructions compute the same integers. bitsandbytes keeps activations in float;
  ``tests/engine/test_nf4_cpu.py`` bounds the difference.
- 16-bit kernel, for other calls of up to ``MAX_KERNEL_TOKENS`` tokens (decoding, and the output layer, which
  serving gives only the last position): NF4 values as 16-bit integers times the input quantised to 16-bit
  integers per token and block of 64 (no zero point), summed in int32 per block, then scaled in float32.
- Anything else (long calls in bf16): the dequantised matrix, in the input's dtype.

Where no compiler, no AVX2 or an unsupported layer shape is found, the bitsandbytes layers stay as they are.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from engine.cpu_weights import SharedProduct, fuse_projections
from engine.native import NF4Weight

BLOCK = 64
W_ONE = 16000.0  # nf4_kernel.c's scale of the int16 code table
# Float32 calls of this many tokens or more run on the prompt kernel (8-bit weights, 7-bit inputs, many tokens per
# pass over the weights): from here on it beats the 16-bit kernel (bench/bench_llm.py times prefills).
PROMPT_KERNEL_TOKENS = 8
# Otherwise up to this many tokens run on the 16-bit kernel (one pass over the weights per 4 tokens), and longer
# inputs in another dtype (bf16, which the prompt kernel doesn't take) on the dequantised matrix.
MAX_KERNEL_TOKENS = 64


class NF4Linear(nn.Module):
    """A bitsandbytes ``Linear4bit`` (NF4, double quantisation, blocks of 64) computed by ``nf4_kernel.c``.

    Holds the same 4-bit codes and quantised scales, with the codes of each block reordered for the kernel.
    """

    def __init__(self, codes: torch.Tensor, state, bias: torch.Tensor | None, library: ctypes.CDLL):
        super().__init__()
        self.out_features, self.in_features = state.shape
        self.library = library
        codes = codes.view(torch.uint8).reshape(-1)
        # bitsandbytes: element 2i in the high nibble of byte i, 2i + 1 in the low one.
        elements = torch.stack([codes >> 4, codes & 15], dim=1).reshape(-1, 2, 32)
        self.register_buffer("packed", (elements[:, 0] | (elements[:, 1] << 4)).reshape(-1).contiguous(),
                             persistent=False)
        self.register_buffer("qabsmax", state.absmax.contiguous(), persistent=False)
        self.register_buffer("absmax2", state.state2.absmax.float().contiguous(), persistent=False)
        self.register_buffer("code2", state.state2.code.float().contiguous(), persistent=False)
        self.offset = float(state.offset)
        code = state.code.float().contiguous()
        self.register_buffer("code", code, persistent=False)
        table = torch.round(code * W_ONE).to(torch.int16).view(torch.uint8).reshape(16, 2)
        self.register_buffer("table", torch.cat([table[:, 0], table[:, 1]]).contiguous(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().contiguous(), requires_grad=False)

    @classmethod
    def from_bitsandbytes(cls, linear: nn.Module, library: ctypes.CDLL) -> "NF4Linear":
        """The same weights as a bitsandbytes ``Linear4bit`` (see ``supports``)."""
        return cls(linear.weight.data, linear.weight.quant_state, linear.bias, library)

    @classmethod
    def quantize(cls, linear: nn.Linear, library: ctypes.CDLL) -> "NF4Linear":
        """A float ``nn.Linear`` quantised as bitsandbytes quantises a ``Linear4bit`` (NF4, double quantisation)."""
        return cls(*quantize_nf4(linear.weight.detach(), library), linear.bias, library)

    @staticmethod
    def supports(linear: nn.Module) -> bool:
        from bitsandbytes.nn import Linear4bit

        # bitsandbytes' own layer only: peft's LoRA wrapper shows its base layer's weight too, and swapping it
        # would drop the adapter (its base layer is swapped instead).
        if not isinstance(linear, Linear4bit):
            return False
        weight = linear.weight
        state = getattr(weight, "quant_state", None)
        return (state is not None and state.quant_type == "nf4" and state.blocksize == BLOCK and state.nested
                and state.state2.blocksize == 256 and len(state.shape) == 2 and state.shape[1] % BLOCK == 0
                and weight.data.device.type == "cpu")

    def weight_struct(self) -> NF4Weight:
        return NF4Weight(self.packed.data_ptr(), self.qabsmax.data_ptr(), self.absmax2.data_ptr(),
                         self.code2.data_ptr(), None if self.bias is None else self.bias.data_ptr(),
                         self.table.data_ptr(), self.offset, self.out_features, self.in_features)

    def dequantized(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 weight, written into ``out`` (contiguous, out_features x in_features) when given."""
        if out is None:
            out = torch.empty(self.out_features, self.in_features)
        assert out.is_contiguous() and out.shape == (self.out_features, self.in_features) and out.dtype == torch.float32
        self.library.nf4_dequantize(ctypes.byref(self.weight_struct()), self.code.data_ptr(), out.data_ptr(),
                                    torch.get_num_threads())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_product(x, [self], self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_nf4(weight: torch.Tensor, library: ctypes.CDLL) -> tuple[torch.Tensor, object]:
    """``bitsandbytes.functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")``,
    the same codes and state, with the coding done by the kernel library: bitsandbytes' CPU path codes on one
    thread, which made the output layer most of a model's load time (``bench/bench_llm.py`` reports load time)."""
    from bitsandbytes.functional import QuantState, get_4bit_type, quantize_blockwise

    values = weight.float().contiguous()
    blocks = values.reshape(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    code = get_4bit_type("nf4", device=weight.device)
    midpoints = ((code[:-1] + code[1:]) / 2).float().contiguous()
    codes = torch.empty(values.numel() // 2, 1, dtype=torch.uint8)
    library.nf4_encode(values.data_ptr(), values.numel(), absmax.data_ptr(), midpoints.data_ptr(), codes.data_ptr(),
                       torch.get_num_threads())
    offset = absmax.mean()
    qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)
    state = QuantState(absmax=qabsmax, shape=weight.shape, dtype=weight.dtype, blocksize=BLOCK, code=code,
                       quant_type="nf4", offset=offset, state2=state2)
    return codes, state


def weight_structs(linears: list[NF4Linear], cached: tuple | None) -> tuple:
    """``(addresses, ctypes array of NF4Weight)`` for ``linears``: ``cached`` while their buffers haven't moved,
    since building the structures on every call costs a visible share of a small projection's time."""
    addresses = tuple(l.packed.data_ptr() for l in linears)
    if cached is not None and cached[0] == addresses:
        return cached
    return addresses, (NF4Weight * len(linears))(*[l.weight_struct() for l in linears])


def nf4_product(x: torch.Tensor, linears: list[NF4Linear], owner: nn.Module) -> torch.Tensor:
    """The outputs of ``linears`` (of one input size) on ``x``, side by side, in one call to the kernel;
    ``owner`` keeps the kernel's view of their weights between calls."""
    shape, dtype, width = x.shape, x.dtype, sum(l.out_features for l in linears)
    x = x.reshape(-1, linears[0].in_features)
    tokens = x.shape[0]
    prompt = takes_prompt_kernel(tokens, dtype, width)
    if tokens > MAX_KERNEL_TOKENS and not prompt:
        return dequantized_product(x, linears, owner).reshape(*shape[:-1], width)
    x = x.float().contiguous()
    if prompt:
        return prompt_product(x, linears, owner, gated=False).reshape(*shape[:-1], width)
    owner._structs = weight_structs(linears, getattr(owner, "_structs", None))
    out = torch.empty(tokens, width)
    library, threads = linears[0].library, torch.get_num_threads()
    scratch = torch.empty(tokens * x.shape[1] * 2 + tokens * x.shape[1] // BLOCK * 4, dtype=torch.uint8)
    quantized_at = scratch.data_ptr()
    library.nf4_linear(owner._structs[1], len(linears), x.data_ptr(), out.data_ptr(), tokens, quantized_at,
                       quantized_at + tokens * x.shape[1] * 2, threads)
    return out.to(dtype).reshape(*shape[:-1], width)


def takes_prompt_kernel(tokens: int, dtype: torch.dtype, rows: int) -> bool:
    """Whether a product of ``tokens`` tokens in ``dtype`` with ``rows`` output rows runs on the prompt kernel,
    which computes float32 in tiles of 8 rows."""
    return tokens >= PROMPT_KERNEL_TOKENS and dtype == torch.float32 and rows % 8 == 0


def prompt_product(x: torch.Tensor, linears: list[NF4Linear], owner: nn.Module, gated: bool,
                   vnni: bool | None = None) -> torch.Tensor:
    """x (tokens, in; float32, contiguous) times ``linears`` on the prompt kernel: their outputs side by side, or
    with ``gated``, ``silu(x gate^T) * (x up^T)`` for ``linears == [gate, up]``, computed tile by tile.
    ``vnni``: the kernel's AVX512-VNNI tiles, same outputs (default: where the CPU has them)."""
    owner._structs = weight_structs(linears, getattr(owner, "_structs", None))
    library, tokens = linears[0].library, x.shape[0]
    if vnni is None:
        vnni = bool(library.nf4_prompt_has_vnni())
    out = torch.empty(tokens, linears[0].out_features if gated else sum(l.out_features for l in linears))
    quantized = torch.empty(tokens * x.shape[1], dtype=torch.uint8)
    scales = torch.empty(2, tokens * x.shape[1] // BLOCK)
    library.nf4_prompt_linear(owner._structs[1], len(linears), linears[0].code.data_ptr(), x.data_ptr(),
                              out.data_ptr(), tokens, quantized.data_ptr(), scales[0].data_ptr(),
                              scales[1].data_ptr(), int(gated), int(vnni), torch.get_num_threads())
    return out


def dequantized_product(x: torch.Tensor, linears: list[NF4Linear], owner: nn.Module) -> torch.Tensor:
    """x (tokens, in) times the dequantised matrices, in x's dtype (bf16 inputs: the model loaded in bf16)."""
    scratch = getattr(owner, "scratch", None)
    weight = (scratch.matrix if scratch else torch.empty)(sum(l.out_features for l in linears), x.shape[-1])
    row = 0
    for linear in linears:  # each into its rows: no concatenated copy
        linear.dequantized(weight[row:row + linear.out_features])
        row += linear.out_features
    bias = None
    if any(l.bias is not None for l in linears):
        bias = torch.cat([l.bias if l.bias is not None else weight.new_zeros(l.out_features) for l in linears])
        bias = bias.to(x.dtype)
    return torch.nn.functional.linear(x, weight.to(x.dtype), bias)


class Scratch:
    """One float32 buffer that a model's prompt-length products dequantise their weights into, in turn: a fresh
    buffer per product would pay its page faults again in every layer."""

    def __init__(self):
        self.buffer = torch.empty(0)

    def matrix(self, rows: int, cols: int) -> torch.Tensor:
        if self.buffer.numel() < rows * cols:
            self.buffer = torch.empty(rows * cols)
        return self.buffer[:rows * cols].view(rows, cols)


class NF4Projections(SharedProduct):
    """Sibling ``NF4Linear``s of one input (a layer's q/k/v, its gate/up) computed in one kernel call."""

    def __init__(self, linears: list[NF4Linear]):
        super().__init__([l.out_features for l in linears])
        self.linears = nn.ModuleList(linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_product(x, list(self.linears), self)

    def silu_gated(self, x: torch.Tensor) -> torch.Tensor | None:
        """``silu(gate(x)) * up(x)`` of a gate/up pair in one pass of the prompt kernel (the products stay in the
        cache); None where that kernel doesn't take ``x`` (few tokens, not float32)."""
        gate, up = self.linears[0], self.linears[-1]
        tokens = x.numel() // x.shape[-1]
        if (len(self.linears) != 2 or gate.out_features != up.out_features
                or not takes_prompt_kernel(tokens, x.dtype, gate.out_features)):
            return None
        out = prompt_product(x.reshape(tokens, -1).contiguous(), [gate, up], self, gated=True)
        return out.reshape(*x.shape[:-1], gate.out_features)


def is_nf4_linear(module: nn.Module | None) -> bool:
    return isinstance(module, NF4Linear)


def use_nf4_kernel(model: nn.Module, library: ctypes.CDLL) -> int:
    """Swap every supported bitsandbytes NF4 layer of ``model`` for an ``NF4Linear`` on ``library`` (the kernels
    ``engine.native.load_native`` gave), in place, and quantise the output layer (which bitsandbytes keeps in
    float) the same way; returns how many layers now run on the kernel.

    The output layer is the largest matrix of a small model (136M of the 0.5B's 494M weights), read whole for every
    token: NF4 reads an eighth of float32's bytes, for a small rise in divergence from the float model (figures in
    bench/README.md).
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if NF4Linear.supports(child):
                setattr(parent, name, NF4Linear.from_bitsandbytes(child, library))
                swapped += 1
    fuse_projections(model, NF4Projections, is_nf4_linear)
    # Not the output layer (quantised below): its float32 weight would hold 545 MB for good, and prompts need
    # only their last position's logits.
    scratch = Scratch()
    for module in model.modules():
        if isinstance(module, (NF4Linear, NF4Projections)):
            module.scratch = scratch
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if swapped and type(output) is nn.Linear and output.in_features % BLOCK == 0:
        model.set_output_embeddings(NF4Linear.quantize(output, library))
        swapped += 1
    return swapped
