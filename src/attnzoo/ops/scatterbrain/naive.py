"""Dense reference for ScatterBrain: explicit features and per-query remainder sets."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask
from attnzoo.ops.local.naive import _window_bias, _window_mask
from attnzoo.ops.local.window import LocalWindow
from attnzoo.ops.performer import draw_projection

__all__ = ["naive_scatterbrain_attention"]


def naive_scatterbrain_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    window_size: int = 4,
    overlap_window: bool = False,
    projection: Tensor | None = None,
    num_features: int = 64,
    rpe_table: Tensor | None = None,
    compat: bool = False,
    scale: float | None = None,
    executor: str = "auto",
) -> Tensor:
    """Dense ScatterBrain (signature of :func:`attnzoo.ops.scatterbrain.scatterbrain_attention`; tests only).

    ``y_i = (sum_{j in E_i} e^{s q_i.k_j} v_j + sum_{j not in E_i} phi(q_i).phi(k_j) v_j) / (same without v)``,
    with ``phi(x) = m^-1/2 exp(s^1/2 W x - s |x|^2 / 2)``; ``compat`` adds the official clamp and epsilon per feature.
    """
    if causal:
        raise ValueError("scatterbrain cannot be causal")
    b, h, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    s = d**-0.5 if scale is None else scale
    if projection is None:
        gen = torch.Generator().manual_seed(0)
        projection = draw_projection(h, num_features, d, raw_qr=compat, generator=gen, dtype=q.dtype)
    m = projection.shape[1]
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    window = LocalWindow.resolve(mode="blockwise", window_size=window_size, overlap_window=overlap_window)
    inside = _window_mask(window, n, q.device)[None, None] & real[:, None, None, :]  # (B, 1, N, N)

    def phi(x: Tensor) -> Tensor:  # (B, H, N, m)
        wx = torch.einsum("bhnd,hmd->bhnm", x, projection.to(x.dtype)) * s**0.5
        return torch.exp(wx - s * 0.5 * (x * x).sum(-1, keepdim=True)) / m**0.5

    fq, fk = phi(q), phi(k) * real[:, None, :, None]
    scores = s * torch.einsum("bhnd,bhmd->bhnm", q, k)
    if rpe_table is not None:
        scores = scores + _window_bias(window, rpe_table, n)[None]
    local = torch.exp(scores).masked_fill(~inside, 0.0)  # (B, H, N, N)
    rest = (~inside).to(q.dtype) * real[:, None, None, :]
    z_rest = torch.einsum("bhij,bhjc->bhic", rest, fk)  # (B, H, N, m): per query, per feature
    s_rest = torch.einsum("bhij,bhjc,bhjd->bhicd", rest, fk, v)
    if not compat:
        num = torch.einsum("bhic,bhicd->bhid", fq, s_rest)
        den = (fq * z_rest).sum(-1)
        return (local @ v + num) / (local.sum(-1) + den)[..., None] * real[:, None, :, None]
    peak = torch.log(fk.amax(2, keepdim=True))
    if window.extension:
        peak = peak.clamp(min=0.0)
    shift = torch.exp(-peak)
    kv = s_rest * shift[..., None] / (z_rest * shift).clamp(min=1e-3)[..., None]
    mass = fq * (z_rest + 1e-5 * fk.sum(2, keepdim=True))  # per-feature softmax mass
    num = torch.einsum("bhic,bhicd->bhid", mass, kv)
    return (local @ v + num) / (local.sum(-1) + mass.sum(-1))[..., None] * real[:, None, :, None]
