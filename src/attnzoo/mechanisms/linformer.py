"""``linformer``: softmax attention over keys and values projected along the sequence (E, F)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.lra_official import lra_entry
from attnzoo.ops.linformer import linformer_attention, naive_linformer_attention
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["LinformerAttention", "LinformerOptions"]

SHARING = ("none", "kv", "headwise", "headwise-kv")


@dataclass(frozen=True)
class LinformerOptions:
    """Options of ``linformer``.

    ``proj_dim`` k projected rows (LRA: ``linformer_k``). ``max_length``: the longest sequence; E and F
    have that many columns and a shorter sequence uses the first N (longer inputs raise). ``sharing``
    (the paper's parameter sharing, section 4): ``none`` -- E and F per head; ``kv`` -- one matrix per
    head for keys and values (the LRA code); ``headwise`` -- E and F shared by all heads;
    ``headwise-kv`` -- one matrix for everything (the paper's layerwise sharing within a layer).
    """

    proj_dim: int = 256
    max_length: int = 4096
    sharing: str = "kv"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("proj_dim", self.proj_dim, minimum=1)
        check_int("max_length", self.max_length, minimum=1)
        check_choice("sharing", self.sharing, SHARING)


def linformer_flops(n: int, d: int, options: LinformerOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``8 N k d`` (E K, F V, the N x k scores, and their values)."""
    return 8.0 * n * options.proj_dim * d


@register(
    "linformer",
    options=LinformerOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=True,
        exact=False,
        deterministic=True,
        time="O(N*k*d)",
        memory="O(N*k)",
        convex=False,
    ),
    functional=linformer_attention,
    reference=naive_linformer_attention,
    flops=linformer_flops,
)
class LinformerAttention(AttentionBase):
    """Linformer: keys and values projected to k rows along the sequence (learned E, F), then softmax.

    Parameters ``e_proj`` (and ``f_proj`` unless shared) ``(H or 1, k, max_length)``, N(0, 0.02^2) as the
    LRA code; padded keys are zeroed before the projection. ``dropout`` acts on the (N x k) probabilities.
    Cross-attention (``context=``): E and F project the S context keys (S <= ``max_length``, E's first S
    columns, as for a shorter sequence); the queries may have any length.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: LinformerOptions = options
        heads = 1 if o.sharing.startswith("headwise") else num_heads
        shape = (heads, o.proj_dim, o.max_length)
        self.e_proj = nn.Parameter(torch.randn(shape) * 0.02)
        self.f_proj = None if o.sharing.endswith("kv") else nn.Parameter(torch.randn(shape) * 0.02)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return linformer_attention(
            q, k, v, mask=mask, e_proj=self.e_proj, f_proj=self.f_proj, dropout_p=self.attention_dropout()
        )


lra_entry(
    "linformer",
    "linformer",
    {"linformer_k": 256},
    lambda args, causal: {"proj_dim": args["linformer_k"], "max_length": args["max_seq_len"], "sharing": "kv"},
    renames={"attn.E": "e_proj"},
    notes="LinformerAttention: linformer_k -> proj_dim, max_seq_len -> max_length, E (H, k, N) -> e_proj "
    "(one per module, not the class-level singleton of N4); shorter inputs use E's first N columns",
)
