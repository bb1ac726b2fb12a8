"""``linformer``: softmax attention over keys and values projected along the sequence to ``proj_dim`` rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv

__all__ = ["check_linformer_args", "default_projections", "linformer_attention"]


def default_projections(heads: int, proj_dim: int, length: int, seed: int, like: Tensor) -> Tensor:
    """``E``: ``(H, proj_dim, length)`` with N(0, 0.02^2) entries drawn from ``seed`` (the LRA code's init)."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(heads, proj_dim, length, generator=gen, dtype=torch.float64) * 0.02
    return e.to(dtype=like.dtype, device=like.device)


def check_linformer_args(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, e_proj: Tensor, f_proj: Tensor
) -> None:
    """Shape, mask and flag checks shared by the fast path and the reference."""
    check_qkv(q, k, v)
    if causal:
        raise ValueError("linformer cannot be causal: its projections mix all positions of the sequence")
    check_padding_mask(mask, q.shape[0], k.shape[-2], q.device)
    for name, proj in (("e_proj", e_proj), ("f_proj", f_proj)):
        if proj.dim() != 3 or proj.shape[0] not in (1, q.shape[1]):
            raise ValueError(f"{name} must have shape (H or 1, proj_dim, max_length), got {tuple(proj.shape)}")
        if k.shape[-2] > proj.shape[-1]:
            raise ValueError(
                f"linformer sequence length {k.shape[-2]} exceeds its maximum length {proj.shape[-1]} "
                "(the projections are sized by the max_length option)"
            )


def linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    e_proj: Tensor | None = None,
    f_proj: Tensor | None = None,
    proj_dim: int = 256,
    seed: int = 0,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Linformer: ``softmax(s q (E K)^T) (F V)`` with pads zeroed in K and V before the projection.

    ``E, F`` have ``max_length`` columns; a sequence of length S uses the first S (the same as
    zero-padding it to ``max_length``). O(N*k*d) time and memory. Paper: Wang et al., "Linformer"
    (2020); spec: ``diffuser-psf-butterfly-nystrom.md`` §5.3 (the LRA code: one E for K and V per head).

    Args:
        q: queries ``(B, H, N, d)``; k: keys ``(B, H, S, d)``; v: values ``(B, H, S, dv)``.
        mask: ``(B, S)`` bool padding mask, True = real key. Default: None.
        causal: must be False (raises otherwise).
        e_proj: E, ``(H or 1, k, max_length)``; default: N(0, 0.02^2) from ``seed`` with ``k = proj_dim``
            and ``max_length = S``.
        f_proj: F, same shape; default: E (key-value sharing).
        proj_dim, seed: for the default E.
        scale: s, default ``d^-1/2``.
        dropout_p: dropout on the attention probabilities (pass 0 in eval).

    Returns:
        ``(B, H, N, dv)``; with every key padded the output is 0.

    Raises:
        ValueError: ``causal=True``, ``S > max_length``, bad shapes or mask.

    Reference: :func:`attnzoo.ops.linformer.naive_linformer_attention`.
    """
    if e_proj is None:
        e_proj = default_projections(q.shape[1], proj_dim, k.shape[-2], seed, q)
    f_proj = e_proj if f_proj is None else f_proj
    check_linformer_args(q, k, v, mask, causal, e_proj, f_proj)
    if mask is not None:
        real = mask[:, None, :, None].to(k.dtype)
        k, v = k * real, v * real
    k_proj, v_proj = _project(e_proj, k), _project(f_proj, v)  # (B, H, k, d), (B, H, k, dv)
    return F.scaled_dot_product_attention(q, k_proj, v_proj, dropout_p=dropout_p, scale=scale)


def _project(proj: Tensor, x: Tensor) -> Tensor:
    """``E x`` along the sequence with E's first S columns: ``proj (H or 1, k, L)``, ``x (B, H, S, e)`` ->
    ``(B, H, k, e)``.

    The batch (and, for one shared E, the heads) are folded into the GEMM's columns, so E's gradient is one
    product contracted over them; ``E @ x`` broadcast over B would first form a ``(B, H, k, S)`` gradient per
    batch row and sum it (for LRA ListOps: 134 MB per call, 4x the time of the whole projection).
    """
    b, h, s_len, width = x.shape
    e = proj[..., :s_len].to(x.dtype)
    rows = e.shape[1]
    if e.shape[0] == 1:
        columns = x.permute(2, 0, 1, 3).reshape(s_len, b * h * width)  # (S, B*H*e)
        return (e[0] @ columns).view(rows, b, h, width).permute(1, 2, 0, 3)
    columns = x.permute(1, 2, 0, 3).reshape(h, s_len, b * width)  # (H, S, B*e)
    return (e @ columns).view(h, rows, b, width).permute(2, 0, 1, 3)
