"""Dense reference of ``linformer``: E and F applied to the sequence zero-padded to ``max_length``."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.linformer.projection import check_linformer_args, default_projections

__all__ = ["naive_linformer_attention"]


def naive_linformer_attention(
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
    """``softmax(s q K'^T) V'`` with ``K' = E pad(K * mask)``, ``V' = F pad(V * mask)``, explicit scores.

    Args: as :func:`attnzoo.ops.linformer.linformer_attention` (``dropout_p`` must be 0).

    Returns:
        ``(B, H, N, dv)``.
    """
    if dropout_p:
        raise ValueError("the reference has no dropout")
    e = default_projections(q.shape[1], proj_dim, k.shape[-2], seed, q) if e_proj is None else e_proj
    f = e if f_proj is None else f_proj
    check_linformer_args(q, k, v, mask, causal, e, f)
    b, h, s_len, _ = k.shape
    keep = torch.ones(b, s_len, dtype=q.dtype) if mask is None else mask.to(q.dtype)
    pad = e.shape[-1] - s_len
    k_full = torch.cat([k * keep[:, None, :, None], k.new_zeros(b, h, pad, k.shape[-1])], dim=2)
    v_full = torch.cat([v * keep[:, None, :, None], v.new_zeros(b, h, pad, v.shape[-1])], dim=2)
    k_proj = torch.einsum("hkl,bhld->bhkd", e.expand(h, -1, -1).to(q.dtype), k_full)
    v_proj = torch.einsum("hkl,bhld->bhkd", f.expand(h, -1, -1).to(q.dtype), v_full)
    s = q.shape[-1] ** -0.5 if scale is None else scale
    probs = torch.softmax(torch.einsum("bhnd,bhkd->bhnk", q, k_proj) * s, dim=-1)
    return torch.einsum("bhnk,bhkd->bhnd", probs, v_proj)
