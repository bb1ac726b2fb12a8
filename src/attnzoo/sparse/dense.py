"""Dense fallback for short sequences: one masked fused-kernel call over all N x N pairs.

When the blocks a pattern visits cover most of the N x N matrix (short N, or windows as wide as the
sequence), running the whole matrix as one masked kernel call beats the block-sparse engine, whose
per-chunk work (gathers, masks, merges) then costs more than the skipped scores save. The mask is
the pattern's exact one (for a union of patterns, the additive ``log(multiplicity)`` of spec §10.2),
so results and gradients equal the sparse path's. It is bounded: ``auto`` takes it only when the
additive mask of the call stays under :data:`DENSE_BYTES` (so N is small), never an O(N^2) mask at
long N. The mask of each pattern (or union) is built once and cached with the pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnzoo.sparse.kernels import Kernel
from attnzoo.sparse.layout import SparsePattern

__all__ = ["DENSE_BYTES", "DENSE_SHARE", "dense_attention", "prefer_dense"]

DENSE_BYTES = 8 * 2**20
"""Largest additive mask (``B|1 x Hp x N x N`` in the input's dtype) the dense fallback may build."""

DENSE_SHARE = 0.5
"""``auto`` runs dense when the visited blocks hold at least this share of the N x N scores."""

_CACHE: dict[tuple[int | str, ...], tuple[list[SparsePattern], Tensor | None, Tensor]] = {}
_CACHE_SIZE = 8


def visited_share(patterns: Sequence[SparsePattern]) -> float:
    """Scores the block-sparse engine computes (visited blocks x bs^2, summed over patterns, mean over
    pattern heads) as a share of the N x N matrix."""
    total = 0.0
    for p in patterns:
        layout = p.layout
        total += float(layout.kv_valid.sum()) / layout.kv_valid.shape[0] * layout.block_size**2
    n = patterns[0].seq_len
    return total / (n * n)


def prefer_dense(patterns: Sequence[SparsePattern], batch: int, padded: bool, itemsize: int) -> bool:
    """Whether ``auto`` should run ``patterns`` as one dense masked call (see the module docstring)."""
    n = patterns[0].seq_len
    heads = max(p.slot_positions().shape[0] for p in patterns)
    mask_bytes = (batch if padded else 1) * heads * n * n * max(itemsize, 4)
    return mask_bytes <= DENSE_BYTES and visited_share(patterns) >= DENSE_SHARE


def _multiplicity(
    patterns: Sequence[SparsePattern], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor]:
    """``(Hp, N, N)`` ``log`` of how many patterns allow each pair (``-inf`` for none; counted in float64), or
    ``None`` when every pair is allowed exactly once (plain softmax), and ``(Hp, N)`` rows with a key.
    Cached per pattern list, dtype and device."""
    key = (*(id(p) for p in patterns), str(dtype), str(device))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit[1], hit[2]
    count = sum(p.to_dense().to(torch.float64) for p in patterns)
    assert isinstance(count, Tensor)
    rows = (count > 0).any(-1).to(device)
    bias = None if bool((count == 1).all()) else count.log().to(device, dtype)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (list(patterns), bias, rows)  # the patterns are kept alive, so their ids stay theirs
    return bias, rows


class _Dense(torch.autograd.Function):
    """One kernel call with a dense additive mask; rows without keys give 0 and ``lse = -inf``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, has_key: Tensor, kernel: Kernel, scale: float
    ):
        out, lse = kernel.forward(q, k, v, bias, False, scale, None)
        ctx.kernel, ctx.scale = kernel, scale
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, bias, has_key, out, lse)
        return out, lse.masked_fill(~has_key, float("-inf"))

    @staticmethod
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, bias, has_key, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        if dlse is not None:
            dlse = dlse.masked_fill(~has_key, 0.0)
        dq, dk, dv = ctx.kernel.backward(dout, dlse, q, k, v, out, lse, bias, False, ctx.scale, None)
        return dq, dk, dv, None, None, None, None


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    patterns: Sequence[SparsePattern],
    mask: Tensor | None,
    causal: bool,
    scale: float,
    kernel: Kernel,
) -> tuple[Tensor, Tensor]:
    """The union of ``patterns`` as one dense masked call: ``softmax(s QK^T + log M) V`` and its lse.

    Args:
        q, k, v: ``(B, H, N, d)``; ``mask``: ``(B, N)`` bool or None; ``causal``: keys j <= i only.

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``, 0 and ``-inf`` on rows without keys.
    """
    b, h, n = q.shape[:3]
    bias, rows = _multiplicity(patterns, q.dtype, q.device)
    if causal or mask is not None:
        bias = torch.zeros(n, n, dtype=q.dtype, device=q.device) if bias is None else bias
        if causal:
            bias = bias.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
        if mask is not None:
            bias = bias.masked_fill(~mask[:, None, None, :], float("-inf"))
        rows = torch.isfinite(bias).any(-1)
    bias = None if bias is None else bias[(None,) * (4 - bias.dim())]  # (B|1, Hp|1, N, N)
    has_key = rows.expand(b, h, n)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _Dense.apply(q, k, v, bias, has_key, kernel, scale)
