"""An HF ``Cache`` whose layers keep attnzoo decode states instead of growing key/value tensors.

``AttnzooCache`` is a :class:`transformers.Cache` of :class:`AttnzooLayer` objects, one per model layer.
A layer's ``update(key, value)`` stores nothing itself: it returns the new keys and values unchanged and
hands itself to the attnzoo attention function that the model calls next (matched by the identity of the
key tensor), which runs the prompt through the mechanism's functional core and keeps the mechanism's
:class:`~attnzoo.mechanisms.decoding.DecodeState` (a KV cache for ``softmax``, a rolling window for
``local``, running feature sums for ``performer``/``linear``, ...) in :attr:`AttnzooLayer.state`; every
later token is one ``decode`` step of that state. ``generate()`` on a model switched with
:func:`attnzoo.integrations.hf.use_attnzoo` creates this cache by default.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from attnzoo.mechanisms.decoding import DecodeState

__all__ = ["AttnzooCache", "AttnzooLayer", "claim_layer"]

_handoff = threading.local()  # (layer, key tensor) of the latest update, taken by the attention function


class AttnzooLayer(CacheLayerMixin):
    """One model layer's decoding state.

    Attributes:
        state: the mechanism's decode state after :attr:`length` tokens, or ``None`` before the prompt.
        decoder: the causal attnzoo module whose ``init_state``/``decode`` advance :attr:`state`
            (built by the attention function on the prompt; holds no learned weights in use).
        length: tokens consumed (prompt, padding included, plus decoded tokens).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state: DecodeState | None = None
        self.decoder: nn.Module | None = None
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Record the device on the first update (the state itself is made by the attention function)."""
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Hand this layer to the attention function; return ``key_states, value_states (B, H_kv, N, d)`` as given."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        _handoff.pending = (self, key_states)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the mask: every token so far plus the queries, from position 0."""
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        """Tokens consumed so far."""
        return self.length

    def get_max_length(self) -> int:
        """-1: no maximum (bounded states stay bounded; softmax's KV cache grows)."""
        return -1

    def reset(self) -> None:
        """Forget the state (the next call is a prompt again)."""
        self.state, self.length = None, 0

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep batch rows ``beam_idx`` ``(B',)`` of the state, in that order (beam search)."""
        if self.state is not None:
            self.state = self.state.select(beam_idx.to(torch.long))

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep batch rows ``indices`` ``(B',)``."""
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times in place (``(B, ...) -> (B * repeats, ...)``)."""
        if self.state is not None:
            rows = torch.arange(self.state.batch_size).repeat_interleave(repeats)
            self.state = self.state.select(rows)

    def crop(self, tokens_to_remove: int) -> None:
        """Refused: a decode state (feature sums, a rolling window) cannot forget tokens it has consumed."""
        raise ValueError(
            f"attnzoo decode states cannot drop tokens (crop({tokens_to_remove})); assisted or speculative "
            "decoding needs a cache that can roll back"
        )


class AttnzooCache(Cache):
    """An HF cache of :class:`AttnzooLayer` objects, created one per layer on first use."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=AttnzooLayer)


def claim_layer(key: Tensor) -> AttnzooLayer | None:
    """The :class:`AttnzooLayer` whose ``update`` returned ``key`` just before, or ``None`` (no attnzoo cache).

    Consumes the hand-off, so one update serves one attention call.
    """
    pending = getattr(_handoff, "pending", None)
    _handoff.pending = None
    if pending is None or pending[1] is not key:
        return None
    return pending[0]
