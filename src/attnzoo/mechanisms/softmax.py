"""``softmax``: exact multi-head attention (the baseline every other mechanism is compared with)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.sampling import EA_COMMON, check_no_dropout, zero_qkv_bias
from attnzoo.official import OfficialEntry, register_official
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
