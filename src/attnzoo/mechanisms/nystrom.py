"""``nystrom``: Nystromformer (segment-mean landmarks, iterative pseudo-inverse, optional conv skip on V)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.lra_official import lra_entry
from attnzoo.ops.nystrom import naive_nystrom_attention, nystrom_attention
from attnzoo.ops.nystrom.nystrom import COMPAT
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["NystromAttention", "NystromOptions"]


@dataclass(frozen=True)
class NystromOptions:
    """Options of ``nystrom`` (the LRA code's names in brackets).

    ``num_landmarks`` m (``num_landmarks``; m >= the number of real tokens gives exact softmax);
    ``pinv_iterations`` of the iterative pseudo-inverse (6); ``conv_kernel``: odd width of the depthwise
    skip convolution on V (``conv_kernel_size``, 35 in the LRA configs), 0 = off; ``compat``:
    ``"nystromformer-lra"`` reproduces the official padding and batch quirks (N1, N2).
    """

    num_landmarks: int = 64
    pinv_iterations: int = 6
    conv_kernel: int = 0
    compat: str = "none"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("num_landmarks", self.num_landmarks, minimum=1)
        check_int("pinv_iterations", self.pinv_iterations, minimum=0)
        check_int("conv_kernel", self.conv_kernel, minimum=0)
        if self.conv_kernel % 2 == 0 and self.conv_kernel:
            raise ValueError(f"option conv_kernel must be odd (or 0 = off), got {self.conv_kernel}")
        check_choice("compat", self.compat, COMPAT)


def nystrom_flops(n: int, d: int, options: NystromOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``8 N m d + 4 m^2 d + 8 it m^3 + 2 N K d``.

    ``softmax(Q K~^T)`` and its product (2 N m d each), ``softmax(Q~ K^T)`` and its product with V (same),
    ``Q~ K~^T`` and ``Z (B V)`` (2 m^2 d each), four (m x m) products per pseudo-inverse iteration, and
    the K-tap convolution. N <= m is exact softmax: ``4 N^2 d``.
    """
    m, conv = options.num_landmarks, 2.0 * n * options.conv_kernel * d
    if n <= m:
        return 4.0 * n * n * d + conv
    return 8.0 * n * m * d + 4.0 * m * m * d + 8.0 * options.pinv_iterations * m**3 + conv


@register(
    "nystrom",
    options=NystromOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=True,
        exact=False,
        deterministic=True,
        time="O(N*m*d + m^3)",
        memory="O(N*m)",
        convex=False,
    ),
    functional=nystrom_attention,
    reference=naive_nystrom_attention,
    flops=nystrom_flops,
)
class NystromAttention(AttentionBase):
    """Nystromformer: softmax attention through m segment-mean landmarks and an iterative pseudo-inverse.

    ``conv`` (``conv_kernel > 0``): depthwise ``Conv2d(H, H, (K, 1), groups=H, bias=False)`` over the
    sequence, added to the output (the LRA code's skip). ``dropout`` is not applied (none in the official code).
    Cross-attention (``context=``): query landmarks over the real queries, key landmarks over the real
    context keys (the Nystrom factors are defined for any N and S); not with the conv skip, which adds
    V to the query rows.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        kernel = options.conv_kernel
        self.conv = (
            nn.Conv2d(num_heads, num_heads, (kernel, 1), padding=(kernel // 2, 0), groups=num_heads, bias=False)
            if kernel
            else None
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return self._nystrom(q, k, v, mask, mask)

    def attend_cross(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, context_mask: Tensor | None) -> Tensor:
        if self.conv is not None:
            raise ValueError(
                "attention 'nystrom' with conv_kernel > 0 has no cross-attention (its skip adds V to the queries)"
            )
        if mask is None:  # every query real, said explicitly: the core reads None as `mask` when N == S
            mask = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        return self._nystrom(q, k, v, context_mask, mask)

    def _nystrom(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, query_mask: Tensor | None) -> Tensor:
        o: NystromOptions = self.options
        return nystrom_attention(
            q,
            k,
            v,
            mask=mask,
            query_mask=query_mask,
            num_landmarks=o.num_landmarks,
            pinv_iterations=o.pinv_iterations,
            conv_weight=None if self.conv is None else self.conv.weight,
            compat=o.compat,
        )


def _lra_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    conv = args["conv_kernel_size"]  # None: the key is absent, and the official builds no conv
    return {"num_landmarks": args["num_landmarks"], "conv_kernel": conv or 0, "compat": "nystromformer-lra"}


# Solving-LRA-PathX's LRA/code fork runs the same kernel (reading max_seq_len instead of seq_len).
for _source in ("nystromformer-lra", "solving-lra-pathx"):
    lra_entry(
        "nystrom",
        "nystrom",
        # conv_kernel_size: the official builds its conv iff the key is in the config (the LRA configs give 35)
        {"num_landmarks": 64, "conv_kernel_size": None, "inv_coeff_init_option": "original"},
        _lra_options,
        renames={"attn.conv.weight": "conv.weight"},
        notes="NystromAttention: conv_kernel_size -> conv_kernel (absent or None = no conv, N3), 6 pinv iterations; "
        "inv_coeff_init_option is never read (misspelt key), so the global init always applies; "
        "compat nystromformer-lra (N1, N2); any N (the official needs N = max_seq_len)",
        source=_source,
    )
