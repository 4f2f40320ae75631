"""A key/value cache that writes each new token into room reserved up front instead of growing by concatenation.

transformers' ``DynamicCache`` appends with ``torch.cat``, copying every layer's whole cache at every decoded
token: after a long prompt, a large share of a CPU decode step. Its ``StaticCache`` copies nothing but attends
over its full length at every step, which only pays off compiled.
This cache reserves room for the prompt and the answer once and hands attention a view of the filled part.

>>> import torch
>>> from transformers import Qwen2Config
>>> cache = preallocated_cache(Qwen2Config(num_hidden_layers=1, num_key_value_heads=1, head_dim=2), capacity=4)
>>> for step in range(6):  # two tokens past the reserved room: it grows
...     keys, values = cache.update(torch.full((1, 1, 1, 2), float(step)), torch.zeros(1, 1, 1, 2), 0)
>>> keys[0, 0, :, 0].tolist(), cache.get_seq_length()
([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 6)
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of buffers with ``capacity`` tokens of room."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(1, capacity)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new_length = length + key_states.shape[-2]
        if self._key_buffer is None or new_length > self._key_buffer.shape[-2]:
            self.capacity = max(self.capacity, new_length if self._key_buffer is None else 2 * new_length)
            self._key_buffer = self._grown(self.keys, key_states, length)
            self._value_buffer = self._grown(self.values, value_states, length)
        self._key_buffer[..., length:new_length, :] = key_states
        self._value_buffer[..., length:new_length, :] = value_states
        self.keys = self._key_buffer[..., :new_length, :]
        self.values = self._value_buffer[..., :new_length, :]
        return self.keys, self.values

    def _grown(self, cached: torch.Tensor, states: torch.Tensor, length: int) -> torch.Tensor:
        grown = states.new_empty((*states.shape[:-2], self.capacity, states.shape[-1]))
        if length:
            grown[..., :length, :] = cached[..., :length, :]
        return grown

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._key_buffer = self._value_buffer = None  # the next update copies the new tensors into fresh buffers

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._key_buffer = self._value_buffer = None


def preallocated_cache(config, capacity: int) -> DynamicCache:
    """A cache for a model with this config, its full-attention layers reserving ``capacity`` tokens (prompt plus
    new tokens); sliding-window layers keep transformers' own kind."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
