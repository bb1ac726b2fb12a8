"""ScatterBrain: exact blockwise local attention (sparse engine) + FAVOR+ features for every other key."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, pad_to_multiple
from attnzoo.ops.local import LocalWindow
from attnzoo.ops.local.sparse import local_pattern, rpe_score_mod
from attnzoo.ops.performer import draw_projection, favor_log_features
from attnzoo.sparse import merge_partials, sparse_attention

__all__ = ["scatterbrain_attention", "window_feature_sums"]


def window_feature_sums(phi: Tensor, v: Tensor, window: int, extension: int) -> tuple[Tensor, Tensor]:
    """Per query block t, ``sum phi(k_j)`` and ``sum phi(k_j) v_j^T`` over its key block ``[tw - e, tw + w + e)``.

    Sums whole sub-blocks of ``u = gcd(w, e)`` tokens (no prefix-sum cancellation).

    Args:
        phi: ``(B, H, N, m)`` features (0 at padded keys), N a multiple of w.
        v: ``(B, H, N, d)``.

    Returns:
        ``(B, H, T, m)`` and ``(B, H, T, m, d)`` for T = N / w blocks.
    """
    b, h, n, m = phi.shape
    u = math.gcd(window, extension) if extension else window
    per, reach = window // u, extension // u
    sub_z = phi.view(b, h, n // u, u, m).sum(3)  # (B, H, S, m)
    sub_s = torch.einsum("bhsum,bhsud->bhsmd", phi.view(b, h, n // u, u, m), v.reshape(b, h, n // u, u, -1))
    sub_z, sub_s = F.pad(sub_z, (0, 0, reach, reach)), F.pad(sub_s, (0, 0, 0, 0, reach, reach))
    blocks = n // window
    span = per + 2 * reach
    z = sum(sub_z[:, :, j : j + blocks * per : per] for j in range(span))
    s = sum(sub_s[:, :, j : j + blocks * per : per] for j in range(span))
    assert isinstance(z, Tensor) and isinstance(s, Tensor)
    return z, s


def scatterbrain_attention(
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
    """ScatterBrain: one softmax over exact local scores and FAVOR+ estimates of all other keys.

    Query i in block t attends its key block E_t exactly (efficient-attention ``local``) and every other
    real key through positive random features ``phi`` (``phi(q).phi(k) ~ exp(s q.k)``): feature c enters
    the softmax with logit ``log phi_c(q_i) + log(Z_c - Z_tc)`` and value ``(S_c - S_tc) / (Z_c - Z_tc)``,
    ``Z_c = sum_j phi_c(k_j)``, ``S_c = sum_j phi_c(k_j) v_j`` (``_t``: over E_t only), i.e. the local part
    is subtracted from the low-rank sums. Time O(N (w + 2e + m) d + N m d), memory O(N m + T m d).
    Chen et al., NeurIPS 2021 (arXiv 2110.15343); ``shared/specs/efficient-attention-eva-lara-longnet.md`` §8.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: must be False.
        window_size: w; overlap_window: widen key blocks by ``max(1, w // 2)``.
        projection: ``(H, m, d)`` FAVOR+ projection; default: orthogonal, drawn with seed 0.
        num_features: m when ``projection`` is None.
        rpe_table: local relative-position table (``LocalWindow.rpe_shape(H)``), or None.
        compat: efficient-attention's numerics (denominators clamped at 1e-3 after a per-feature max shift
            that counts out-of-window slots as log-feature 0, ``+1e-5`` inside the logarithm); NaN rows are
            never reproduced (quirk E10: out-of-range keys have feature 0 here).
        scale: s, default ``d ** -0.5``. executor: the sparse engine's executor for the local part.

    Returns:
        ``(B, H, N, d)``; rows of padded queries are 0.

    Raises:
        ValueError: ``causal=True``, a projection of the wrong shape.

    Reference: :func:`attnzoo.ops.scatterbrain.naive_scatterbrain_attention`.
    """
    check_qkv(q, k, v, cross=False)
    if causal:
        raise ValueError("scatterbrain cannot be causal")
    b, h, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    window = LocalWindow.resolve(mode="blockwise", window_size=window_size, overlap_window=overlap_window)
    if projection is None:
        projection = draw_projection(h, num_features, d, generator=torch.Generator().manual_seed(0), dtype=q.dtype)
    if projection.dim() != 3 or projection.shape[0] != h or projection.shape[2] != d:
        raise ValueError(f"projection must have shape (H, m, d) = ({h}, m, {d}), got {tuple(projection.shape)}")
    if b == 0 or n == 0:
        return v * 0
    scale = d**-0.5 if scale is None else float(scale)
    w, e = window.size, window.extension
    score_mod = None if rpe_table is None else rpe_score_mod(window, rpe_table)
    local_out, local_lse = sparse_attention(
        q, k, v, local_pattern(window, n), mask=mask, scale=scale, executor=executor, score_mod=score_mod
    )
    if local_lse is None:
        raise ValueError(f"executor {executor!r} returns no log-sum-exp; ScatterBrain needs it (use 'gather')")
    proj = projection.to(q.device)
    log_q, log_k = favor_log_features(q, proj, scale), favor_log_features(k, proj, scale)  # (B, H, N, m)
    if mask is not None:
        log_k = log_k.masked_fill(~mask[:, None, :, None], float("-inf"))
    with torch.no_grad():
        peak = log_k.amax(2, keepdim=True).nan_to_num(0.0, neginf=0.0)  # (B, H, 1, m)
        if compat and e:
            peak = peak.clamp(min=0.0)  # official: out-of-range window slots hold log-feature 0
    phi = pad_to_multiple(torch.exp(log_k - peak), w)
    z_local, s_local = window_feature_sums(phi, pad_to_multiple(v, w), w, e)
    z_rest = phi.sum(2, keepdim=True) - z_local  # (B, H, T, m)
    s_rest = torch.einsum("bhnm,bhnd->bhmd", phi, pad_to_multiple(v, w))[:, :, None] - s_local
    denom = z_rest.clamp(min=1e-3) if compat else z_rest
    kv = s_rest / torch.where(denom > 0, denom, torch.ones_like(denom))[..., None]  # (B, H, T, m, d)
    mass = z_rest + 1e-5 * phi.sum(2, keepdim=True) if compat else z_rest
    left = mass > 0
    none = torch.finfo(mass.dtype).min / 4  # no key left: weight exp(none) = 0, with finite gradients
    log_mass = torch.where(left, torch.log(torch.where(left, mass, 1.0)) + peak, none)
    blocks = kv.shape[2]
    logits = pad_to_multiple(log_q, w).view(b, h, blocks, w, -1) + log_mass[:, :, :, None]  # (B, H, T, w, m)
    lr_lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lr_lse.nan_to_num(0.0, neginf=0.0)[..., None])
    lr_out = (probs @ kv).reshape(b, h, blocks * w, v.shape[-1])[:, :, :n]
    lr_lse = lr_lse.reshape(b, h, blocks * w)[:, :, :n]
    out, _ = merge_partials([local_out.to(q.dtype), lr_out], [local_lse.to(lr_lse.dtype), lr_lse])
    out = out.to(q.dtype)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)
