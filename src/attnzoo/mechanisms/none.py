"""``none``: the no-attention baseline (value projection, then output projection)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.none import naive_none_attention, none_attention
from attnzoo.registry import Capabilities, register

__all__ = ["NoAttention", "NoneOptions", "NoneState"]


@dataclass
class NoneState(DecodeState):
    """Nothing to remember: ``real_tokens: (B,)`` long counts each sequence's real tokens so far."""

    real_tokens: Tensor


@dataclass(frozen=True)
class NoneOptions:
    """The baseline has no options."""


@register(
    "none",
    options=NoneOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=False,
        exact=True,
        deterministic=True,
        time="O(N*d)",
        memory="O(N*d)",
    ),
    functional=none_attention,
    reference=naive_none_attention,
)
class NoAttention(AttentionBase):
    """No token mixing: each position passes its own value vector through (LRA's "none" baseline).

    There are no attention probabilities, so ``dropout`` has nothing to act on and is not applied.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return none_attention(q, k, v, mask=mask, causal=self.causal)

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> NoneState:
        real = torch.full((v.shape[0],), v.shape[2], device=v.device) if mask is None else mask.sum(1)
        return NoneState(v.shape[2], real)

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, NoneState]:
        if not isinstance(state, NoneState):
            raise TypeError(f"none decodes from a NoneState, got {type(state).__name__}")
        return none_attention(q, k, v), NoneState(state.length + 1, state.real_tokens + 1)
