"""``softmax``: exact multi-head attention (the baseline every other mechanism is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.ops.softmax import naive_softmax_attention, softmax_attention
from attnzoo.registry import Capabilities, register

__all__ = ["SoftmaxAttention", "SoftmaxOptions"]


@dataclass(frozen=True)
class SoftmaxOptions:
    """Exact attention has no options of its own."""


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
    ),
    functional=softmax_attention,
    reference=naive_softmax_attention,
)
class SoftmaxAttention(AttentionBase):
    """Exact softmax attention through PyTorch's fused SDPA kernels."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return softmax_attention(q, k, v, mask=mask, causal=self.causal, dropout_p=self.attention_dropout())
