"""``softmax``: exact multi-head attention (the baseline every other mechanism is compared with)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.mechanisms.sampling import EA_COMMON, check_no_dropout, zero_qkv_bias
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.softmax import naive_softmax_attention, softmax_attention
from attnzoo.registry import Capabilities, register

__all__ = ["KVCache", "SoftmaxAttention", "SoftmaxOptions"]


@dataclass
class KVCache(DecodeState):
    """Every key and value so far: ``k, v: (B, H, L, d)`` and ``real: (B, L)`` (False = prompt padding)."""

    k: Tensor
    v: Tensor
    real: Tensor

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """The cache with one more real token ``k, v: (B, H, 1, d)`` at the end."""
        real = torch.ones(self.real.shape[0], 1, dtype=torch.bool, device=self.real.device)
        return KVCache(
            self.length + 1, torch.cat([self.k, k], 2), torch.cat([self.v, v], 2), torch.cat([self.real, real], 1)
        )


def kv_cache(k: Tensor, v: Tensor, mask: Tensor | None) -> KVCache:
    """A :class:`KVCache` holding a prompt's ``k, v: (B, H, T, d)`` with padding ``mask: (B, T) | None``."""
    real = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) if mask is None else mask
    return KVCache(k.shape[2], k, v, real)


@dataclass(frozen=True)
class SoftmaxOptions:
    """Exact attention has no options of its own."""


def softmax_flops(n: int, d: int, options: SoftmaxOptions, causal: bool) -> float:
    """Forward matmul FLOPs of exact attention per (batch, head): ``4 * d * entries``, where entries =
    ``N^2`` (``q k^T`` and ``P v``, 2 FLOPs per multiply-add each), or ``N (N + 1) / 2`` when causal."""
    entries = n * (n + 1) / 2 if causal else n * n
    return 4.0 * d * entries


@register(
    "softmax",
    options=SoftmaxOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=True,
        exact=True,
        deterministic=True,
        time="O(N^2*d)",
        memory="O(N*d) (fused SDPA)",
        attn_mask=True,
    ),
    functional=softmax_attention,
    reference=naive_softmax_attention,
    flops=softmax_flops,
)
class SoftmaxAttention(AttentionBase):
    """Exact softmax attention through PyTorch's fused SDPA kernels."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return softmax_attention(q, k, v, mask=mask, causal=self.causal, dropout_p=self.attention_dropout())

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> KVCache:
        return kv_cache(k, v, mask)

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, KVCache]:
        if not isinstance(state, KVCache):
            raise TypeError(f"softmax decodes from a KVCache, got {type(state).__name__}")
        state = state.append(k, v)
        return softmax_attention(q, state.k, state.v, mask=state.real, dropout_p=self.attention_dropout()), state


def _efficient_attention_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if causal:
        raise ValueError("efficient-attention 'softmax' has no causal mode")
    check_no_dropout(args, "proj_drop")
    return {}


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="softmax",
        mechanism="softmax",
        defaults=dict(EA_COMMON),
        options=_efficient_attention_options,
        convert=lambda state_dict, args: zero_qkv_bias(state_dict),
        notes="MultiheadAttention: qkv, proj keep their names (qkv_bias=False -> zero bias); attn_drop acts in "
        "training only",
    )
)
