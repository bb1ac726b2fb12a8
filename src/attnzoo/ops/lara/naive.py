"""Dense reference for LARA, written from spec §5 in probability space with explicit segment matrices."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask

__all__ = ["naive_lara_attention", "naive_segment_matrix"]


def naive_segment_matrix(mask: Tensor, num: int) -> Tensor:
    """``(B, C, N)`` 0/1: segment c holds the real tokens of ranks ``[start_c, end_c)`` (Nystromformer split).

    ``C = min(num, N)``; a row with n real tokens has ``min(num, n)`` segments of ``n // count`` tokens,
    the last ``n % count`` of them one longer; the remaining segments are empty.
    """
    n = mask.shape[1]
    c = max(1, min(num, n))
    real = mask.sum(-1, keepdim=True)  # (B, 1)
    used = real.clamp(max=num).clamp(min=1)
    idx = torch.arange(c, device=mask.device)[None]
    long_from = used - real % used  # segments >= this index get one extra token
    sizes = (real // used) + (idx >= long_from).long()
    sizes = torch.where(idx < used, sizes, torch.zeros_like(sizes))
    ends = sizes.cumsum(-1)
    starts = ends - sizes
    rank = (mask.long().cumsum(-1) - 1)[:, None, :]  # (B, 1, N)
    inside = (rank >= starts[..., None]) & (rank < ends[..., None]) & mask[:, None, :]
    return inside.to(torch.float64)


def naive_lara_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_landmarks: int = 49,
    mis_type: str = "mis-opt",
    alpha_coeff: float = 1.0,
    landmarks: tuple[Tensor, Tensor, Tensor] | None = None,
    noise: Tensor | None = None,
    antithetic: bool = False,
    count_padding: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Dense LARA with the same signature as :func:`attnzoo.ops.lara.lara_attention` (tests only).

    Every quantity is formed explicitly: landmarks as ``A x / A 1`` with the segment matrix A,
    the random features ``xi(x, w) = exp(s w.x - s|x|^2/2)``, the target ratio
    ``xi(q_n, w) sum_m xi(k_m, w) / xi(mu_c, w)`` and the MIS weights, normalised in probability space.
    """
    if causal:
        raise ValueError("lara cannot be causal")
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    s = d**-0.5 if scale is None else scale
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
    if count_padding:
        q, k, v = (t * real[:, None, :, None] for t in (q, k, v))
    if landmarks is None:
        seg = naive_segment_matrix(torch.ones_like(real) if count_padding else real, num_landmarks).to(q.dtype)
        counts = seg.sum(-1)  # (B, C)
        q_lm = torch.einsum("bcn,bhnd->bhcd", seg, q) / counts.clamp(min=1)[:, None, :, None]
        k_lm = torch.einsum("bcn,bhnd->bhcd", seg, k) / counts.clamp(min=1)[:, None, :, None]
        valid = counts > 0
    else:
        q_lm, k_lm, valid = landmarks
    mu = q_lm + k_lm
    c = mu.shape[2]
    if noise is None:
        omega, mu_s = mu, mu
    else:
        eps = torch.cat([noise, -noise], dim=2) if antithetic else noise
        mu_s = mu.repeat(1, 1, eps.shape[2] // c, 1)
        omega = mu_s + eps
    valid_s = valid.repeat(1, omega.shape[2] // c)[:, None, :]  # (B, 1, S)

    def xi(x: Tensor) -> Tensor:  # (B, H, S, M): exp(s w_c.x_m - s|x_m|^2/2)
        return torch.exp(s * torch.einsum("bhcd,bhmd->bhcm", omega, x) - s * 0.5 * (x * x).sum(-1)[:, :, None, :])

    key_feat = xi(k) * real[:, None, None, :]
    kappa = torch.einsum("bhcm,bhme->bhce", key_feat, v) / key_feat.sum(-1, keepdim=True)
    lam = xi(mu_s) * valid_s[..., None, :]  # Lambda as densities: xi(mu_c', w_c)
    own = torch.diagonal(lam, dim1=-2, dim2=-1)  # (B, H, S)
    if mis_type == "mis-opt":
        bh = own / lam.sum(-1)
        t = torch.exp(s * torch.einsum("bhcd,bhnd->bhcn", q_lm, q))
        t = t if count_padding else t * real[:, None, None]
        t = t / t.sum(-1, keepdim=True)
        t_mean = (t * valid[:, None, :, None]).sum(2, keepdim=True) / valid.sum(-1)[:, None, None, None]
        t = t.repeat(1, 1, omega.shape[2] // c, 1)
        alpha = torch.clamp(bh[..., None] + alpha_coeff * (t - t_mean), min=1e-8)
        g = own
    else:
        alpha = torch.exp(s * torch.einsum("bhcd,bhnd->bhcn", mu_s, q)) if mis_type == "mis-biased" else 1.0
        g = lam.sum(-1)
    g = torch.where(valid_s, g, torch.ones_like(g))  # empty segments: weight 0 below
    ratio = alpha * xi(q) * key_feat.sum(-1)[..., None] / g[..., None] * valid_s[..., None]
    weights = ratio / ratio.sum(2, keepdim=True)
    return torch.einsum("bhcn,bhce->bhne", weights, kappa) * real[:, None, :, None]
