"""The decode loop's KV cache: after the prompts' pass, each full-attention layer's keys and values move into
buffers reserved once for the whole decode (the longest prompt plus max_new_tokens), a step writing its
token in place.

transformers' DynamicCache concatenates each step's keys onto the cache, copying the whole cache every
step (a third of a decode step's time at 128 rows on a CPU, profiled on SmolLM2-135M; docs/benchmarks.md).
Here a step copies nothing: attention reads the whole reserve, contiguous, its unwritten positions masked
as transformers masks a StaticCache's. (A view of the written positions alone is not contiguous per row,
and the CPU's batched matrix product copies such a view whole: the copy saved would come back.) The cache
is copied only when rows leave the batch or a prompt's cache is repeated for its samples."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are reserved buffers of `reserve` positions, `length` of them
    written. Writing past the reserve grows it (doubling): a longer decode than planned is slower, not wrong."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = reserve
        self.length = 0

    @classmethod
    def holding(cls, layer: DynamicLayer, reserve: int) -> "ReservedLayer":
        """A reserved layer holding a filled DynamicLayer's keys and values (copied once)."""
        reserved = cls(max(reserve, layer.get_seq_length()))
        if layer.get_seq_length() > 0:
            reserved.update(layer.keys, layer.values)
        return reserved

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        # Zeros, not empty memory: a masked position has weight 0, and 0 x NaN garbage would still be NaN.
        self.keys = key_states.new_zeros(self._shape(key_states, self.reserve))
        self.values = value_states.new_zeros(self._shape(value_states, self.reserve))
        self.is_initialized = True

    @staticmethod
    def _shape(states: torch.Tensor, positions: int) -> tuple[int, ...]:
        batch, heads, _, dim = states.shape
        return batch, heads, positions, dim

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.reserve:
            self._grow(max(end, 2 * self.reserve))
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys, self.values

    def _grow(self, positions: int) -> None:
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(self._shape(old, positions))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.reserve = positions

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Attention sees the whole reserve; the positions past the written ones are masked as in the future.
        self._ensure_reserve(self.length + query_length)
        return self.reserve, 0

    def _ensure_reserve(self, positions: int) -> None:
        if self.is_initialized and positions > self.reserve:
            self._grow(max(positions, 2 * self.reserve))
        elif not self.is_initialized:
            self.reserve = max(self.reserve, positions)

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if self.is_initialized and tokens_to_remove < 0:
            self.length = max(0, self.length + tokens_to_remove)
            self.keys[:, :, self.length :] = 0
            self.values[:, :, self.length :] = 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self.keys = self.keys[indices]
            self.values = self.values[indices]


def reserve(cache: DynamicCache, positions: int) -> None:
    """Move the cache's full-attention layers into buffers of `positions` positions, in place; other layer
    kinds (sliding windows) stay as transformers makes them. The prompts' pass runs before, on the plain
    layers: there attention reads the prompts' positions alone, not the whole reserve."""
    cache.layers = [ReservedLayer.holding(layer, positions) if type(layer) is DynamicLayer else layer for layer in cache.layers]
