"""One forward pass of the serving model for the decoding loop: ``forward(ids) -> logits of the last position``.

Each forward object holds the key/value cache of one generation, so calling it with the prompt and then with
each new token decodes. Two kinds, picked by ``model_forward``:

- ``TransformersForward``: the model's own forward with a preallocated cache. Runs anything transformers runs
  (GPUs, bitsandbytes 4-bit, peft adapters, any architecture).
- ``DecoderLayersForward``: Llama-family decoder layers (Qwen2, Llama) driven directly, with a static cache of
  one tensor for keys and one for values, and a ``PromptCache`` that carries the opening a prompt shares with the
  previous one. On a CPU transformers' forward spends as much time in Python as in everything but the matrix
  products; a step here is little more than the products (``bench/bench_llm.py --generation app,transformers``).
  One-token steps then run their small operations in C (``engine.native``'s decode_ops) where it is built. It
  computes the same logits (the tests compare both on the same weights, with and without the C operations).
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
import torch.nn.functional as F

from engine.cpu_weights import PerTokenScaled, fused_linear

# Architectures whose decoder layers match DecoderLayersForward: pre-norm RMSNorm, rotary attention with grouped
# key/value heads, SiLU-gated MLP.
LLAMA_FAMILY = ("qwen2", "llama")


class Forward(Protocol):
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) of the last position, after feeding ``input_ids`` (batch, new tokens)."""


def model_forward(loaded, capacity: int) -> Forward:
    """The fastest forward for this loaded model, with a cache for ``capacity`` tokens (prompt + answer)."""
    if loaded.device == "cpu" and DecoderLayersForward.supports(loaded.model):
        if loaded.prompt_cache is None or loaded.prompt_cache.model is not loaded.model:
            loaded.prompt_cache = PromptCache(loaded.model)  # a copy of a LoadedModel may hold another model
        return DecoderLayersForward(loaded.model, capacity, loaded.prompt_cache, loaded.native)
    return TransformersForward(loaded.model, capacity)


class PromptCache:
    """Keys and values of the last prompt, so that the next one is prefilled only from where the two part.

    Every grounded prompt opens with the same system prompt and chat-template tokens, and prefill is
    compute-bound on a CPU: reusing them saves their share of it (bench/bench_llm.py's "TTFT next").
    """

    # Shorter shared openings are not worth a copy of the cache.
    MIN_REUSE = 16

    def __init__(self, model):
        self.model = model
        self.ids: list[int] = []
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def shared(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` have cached keys and values (0 when too few to bother); the last
        token is never among them, since its logits are needed."""
        length = 0
        for cached, new in zip(self.ids, ids[:-1]):
            if cached != new:
                break
            length += 1
        return length if length >= self.MIN_REUSE else 0

    def store(self, ids: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        self.ids = list(ids)
        self.keys, self.values = keys[..., :len(ids), :].clone(), values[..., :len(ids), :].clone()


class TransformersForward:
    def __init__(self, model, capacity: int):
        from engine.kv_cache import preallocated_cache

        self.model = model
        self.cache = preallocated_cache(model.config, capacity)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # Only the last position's logits: a long prompt's full logits are hundreds of MB of fp32.
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids.to(self.model.device), past_key_values=self.cache, use_cache=True,
                         **self.extra)
        return out.logits[:, -1]


class DecoderLayersForward:
    """Llama-family decoder layers run directly, batch 1, with the model's own modules and weights."""

    @staticmethod
    def supports(model) -> bool:
        config = getattr(model, "config", None)
        if config is None or hasattr(model, "peft_config") or config.model_type not in LLAMA_FAMILY:
            return False
        full_attention = all(t == "full_attention" for t in getattr(config, "layer_types", None) or ())
        return (full_attention and not getattr(config, "use_sliding_window", False)
                and config.hidden_act == "silu" and getattr(config, "pretraining_tp", 1) == 1)

    def __init__(self, model, capacity: int, prompt_cache: PromptCache | None = None, native=None):
        config = model.config
        self.prompt_cache = prompt_cache
        # engine.native's library: one-token steps run its decode_ops (float32 models only).
        self.native = native
        self.model = model
        self.layers = list(model.model.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.capacity = max(1, capacity)
        self.keys = self.values = None
        self.length = 0

    def _reserve(self, needed: int, like: torch.Tensor) -> None:
        if self.keys is not None and needed <= self.keys.shape[-2]:
            return
        capacity = max(self.capacity, needed) if self.keys is None else 2 * needed
        shape = (len(self.layers), 1, self.kv_heads, capacity, self.head_dim)
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self.keys is not None:
            keys[..., :self.length, :] = self.keys[..., :self.length, :]
            values[..., :self.length, :] = self.values[..., :self.length, :]
        self.keys, self.values = keys, values

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError("DecoderLayersForward decodes one sequence at a time")
        cache = self.prompt_cache if self.length == 0 and input_ids.shape[1] > 1 else None
        if cache is None:
            return self._forward(input_ids)
        prompt = input_ids[0].tolist()
        reused = cache.shared(prompt)
        if reused:
            self._reserve(len(prompt), cache.keys)
            self.keys[..., :reused, :] = cache.keys[..., :reused, :]
            self.values[..., :reused, :] = cache.values[..., :reused, :]
            self.length = reused
        logits = self._forward(input_ids[:, reused:])
        cache.store(prompt, self.keys, self.values)
        return logits

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        new, start = input_ids.shape[1], self.length
        end = start + new
        hidden = self.model.model.embed_tokens(input_ids)
        self._reserve(end, hidden)
        if new == 1 and self.native is not None and hidden.dtype == torch.float32:
            return self._decode_token(hidden.contiguous())
        positions = torch.arange(start, end).unsqueeze(0)
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        cos, sin = cos[0, :, None], sin[0, :, None]  # (new, 1, head_dim): broadcast over heads
        mask = None
        if new > 1 and start:  # a continuation of several tokens: causal within them, all of the past visible
            mask = torch.ones(new, end, dtype=torch.bool).tril(start)
        last_layer = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            # The last layer's output is needed at the last position only (for its logits), so a prompt's other
            # positions stop once their keys and values are cached: 1/24 of the 0.5B's prefill.
            last_only = index == last_layer and new > 1
            attended = self._attention(index, layer, rms_norm(hidden, layer.input_layernorm), cos, sin, start,
                                       mask, last_only)
            hidden = (hidden[:, -1:] if last_only else hidden) + attended
            hidden = hidden + self._mlp(layer.mlp, rms_norm(hidden, layer.post_attention_layernorm))
        self.length = end
        last = rms_norm(hidden[:, -1:], self.model.model.norm)
        return self.model.lm_head(last)[:, -1]

    def _attention(self, index, layer, x, cos, sin, start, mask, last_only=False):
        attention = layer.self_attn
        new, heads, kv_heads, head_dim = x.shape[1], self.heads, self.kv_heads, self.head_dim
        qkv = project(x, attention.q_proj, attention.k_proj, attention.v_proj)
        qkv = qkv.view(1, new, heads + 2 * kv_heads, head_dim)
        rotated = qkv[:, :, :heads + kv_heads]  # queries and keys turn together
        rotated = rotated * cos + rotate_half(rotated) * sin
        end = start + new
        self.keys[index, :, :, start:end] = rotated[:, :, heads:].transpose(1, 2)
        self.values[index, :, :, start:end] = qkv[:, :, heads + kv_heads:].transpose(1, 2)
        keys, values = self.keys[index, :, :, :end], self.values[index, :, :, :end]
        queries = rotated[:, :, :heads].transpose(1, 2)
        if new == 1 or last_only:
            # One query per head: grouped by key/value head, attention needs no repeated keys.
            queries = queries[:, :, -1:].reshape(1, kv_heads, heads // kv_heads, head_dim)
            out = F.scaled_dot_product_attention(queries, keys, values, scale=attention.scaling)
            out = out.reshape(1, 1, heads * head_dim)
        elif self._native_prefill(rotated):
            out = x.new_empty(1, new, heads * head_dim)
            self.native.prefill_attention(rotated.data_ptr(), rotated.stride(1), keys.data_ptr(), values.data_ptr(),
                                          start, new, self.keys.shape[-2], heads, kv_heads, head_dim,
                                          attention.scaling, out.data_ptr(), torch.get_num_threads())
        else:
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=mask is None,
                                                 scale=attention.scaling, enable_gqa=heads != kv_heads)
            out = out.transpose(1, 2).reshape(1, new, heads * head_dim)
        return attention.o_proj(out)

    def _native_prefill(self, rotated: torch.Tensor) -> bool:
        """Whether a prompt's attention runs in engine.native's prefill_attention, faster than torch's as it skips
        every block of scores above the diagonal (bench/bench_llm.py times prefills)."""
        return (self.native is not None and rotated.dtype == torch.float32 and rotated.stride(-1) == 1
                and rotated.stride(-2) == self.head_dim and self.head_dim % 16 == 0 and self.head_dim <= 256)

    def _mlp(self, mlp, x):
        fused = fused_linear(mlp.gate_proj)
        activation = fused.silu_gated(x) if fused is not None and fused_linear(mlp.up_proj) is fused else None
        if activation is not None:  # the NF4 prompt kernel's gated pass: no gate/up product in memory
            return self._down(mlp.down_proj, activation)
        gate_up = project(x, mlp.gate_proj, mlp.up_proj)
        width = gate_up.shape[-1] // 2
        if self.native is not None and gate_up.dtype == torch.float32:  # one pass over gate/up instead of three
            gate_up = gate_up.contiguous()
            activation = gate_up.new_empty(*gate_up.shape[:-1], width)
            self.native.silu_mul(gate_up.data_ptr(), activation.data_ptr(), width, gate_up.numel() // (2 * width),
                                 torch.get_num_threads())
        else:
            activation = F.silu(gate_up[..., :width]) * gate_up[..., width:]
        return self._down(mlp.down_proj, activation)

    @staticmethod
    def _down(down, x):
        if isinstance(down, PerTokenScaled) and x.shape[1] == 1:
            # One token: the kernel's own per-call activation scale is already a per-token scale.
            out = down.linear(x)
            return out if down.bias is None else out + down.bias
        return down(x)

    def _decode_token(self, hidden: torch.Tensor) -> torch.Tensor:
        """``_forward`` for one token with engine.native's decode_ops: the same arithmetic as the torch ops in
        float32 (to rounding), without dispatching a dozen small operations per layer (bench/bench_llm.py's
        decode speed)."""
        native, layers, position = self.native, self.layers, self.length
        size, heads, kv_heads, head_dim = hidden.shape[-1], self.heads, self.kv_heads, self.head_dim
        cos, sin = self.model.model.rotary_emb(hidden, torch.tensor([[position]]))
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        normed, attended = torch.empty_like(hidden), hidden.new_empty(1, 1, heads * head_dim)
        scores = hidden.new_empty(heads * (position + 1))
        capacity, layer_bytes = self.keys.shape[-2], self.keys.stride(0) * self.keys.element_size()
        threads = torch.get_num_threads()

        def add_and_norm(delta, norm):  # hidden += delta; normed = norm(hidden)
            native.add_rms_norm(hidden.data_ptr(), None if delta is None else delta.contiguous().data_ptr(),
                                norm.weight.data_ptr(), norm.variance_epsilon, normed.data_ptr(), size)

        add_and_norm(None, layers[0].input_layernorm)
        for index, layer in enumerate(layers):
            attention = layer.self_attn
            qkv = project(normed, attention.q_proj, attention.k_proj, attention.v_proj).contiguous()
            native.decode_attention(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                    self.keys.data_ptr() + index * layer_bytes,
                                    self.values.data_ptr() + index * layer_bytes, position, capacity, heads,
                                    kv_heads, head_dim, attention.scaling, attended.data_ptr(), scores.data_ptr(),
                                    threads)
            add_and_norm(attention.o_proj(attended), layer.post_attention_layernorm)
            following = layers[index + 1].input_layernorm if index + 1 < len(layers) else self.model.model.norm
            add_and_norm(self._mlp(layer.mlp, normed), following)
        self.length = position + 1
        return self.model.lm_head(normed)[:, -1]


def project(x: torch.Tensor, *linears) -> torch.Tensor:
    """The outputs of ``linears`` on ``x``, side by side: one product when they are parts of one fused matrix."""
    fused = fused_linear(linears[0])
    if fused is not None and all(fused_linear(l) is fused for l in linears) and len(linears) == len(fused.parts):
        return fused(x)
    return torch.cat([linear(x) for linear in linears], dim=-1)


def rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """The model's RMSNorm; written out, it ran faster than ``F.rms_norm`` on one token (fewer dtype checks)."""
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' ``rotate_half`` (Llama's and Qwen2's), here so that importing llm loads no transformers."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
