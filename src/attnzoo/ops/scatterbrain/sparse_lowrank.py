"""ScatterBrain: exact blockwise local attention (sparse engine) + FAVOR+ features for every other key."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, pad_to_multiple
from attnzoo.ops.local import LocalWindow
from attnzoo.ops.local.sparse import local_pattern, rpe_score_mod
from attnzoo.ops.performer import draw_projection, favor_log_features
from attnzoo.sparse import merge_partials, sparse_attention

__all__ = ["remainder_feature_sums", "scatterbrain_attention"]


CHUNK_BYTES = 4 * 2**20
"""Tokens per step of the low-rank part: as many as keep one ``(B, H, rows, m)`` feature tensor under this size
(whole-sequence ones are 32 MiB at N = 16384, 8 heads, m = 64, and glibc maps those afresh on every call here)."""


def remainder_feature_sums(phi: Tensor, v: Tensor, window: int, extension: int) -> tuple[Tensor, Tensor]:
    """Per query block t, ``sum phi(k_j)`` and ``sum phi(k_j) v_j^T`` over the keys outside its key block
    ``[tw - e, tw + w + e)``.

    Added up from prefix and suffix sums of whole sub-blocks of ``u = gcd(w, e)`` tokens, never as the total
    minus the block: a key that dominates a feature inside the block would make that difference cancel.

    Args:
        phi: ``(B, H, N, m)`` features (0 at padded keys), N a multiple of w.
        v: ``(B, H, N, d)``.

    Returns:
        ``(B, H, T, m)`` and ``(B, H, T, m, d)`` for T = N / w blocks.
    """
    u = _sub_block(window, extension)
    return _remainder_sums(*_sub_block_sums(phi, v, u), window, extension)


def _sub_block(window: int, extension: int) -> int:
    return math.gcd(window, extension) if extension else window


def _sub_block_sums(phi: Tensor, v: Tensor, u: int) -> tuple[Tensor, Tensor]:
    """``sum phi`` ``(B, H, S, m)`` and ``sum phi v^T`` ``(B, H, S, m, d)`` over sub-blocks of u tokens (N = S u)."""
    b, h, n, m = phi.shape
    blocks = phi.view(b, h, n // u, u, m)
    return blocks.sum(3), torch.einsum("bhsum,bhsud->bhsmd", blocks, v.reshape(b, h, n // u, u, -1))


def _outside(sub: Tensor, starts: Tensor, stops: Tensor) -> Tensor:
    """``sum_{j < starts[t]} sub_j + sum_{j >= stops[t]} sub_j`` along dim 2, from exclusive prefix and suffix sums."""
    zero = torch.zeros_like(sub[:, :, :1])
    before = torch.cat([zero, sub.cumsum(2)], 2)  # before[i]: the first i sub-blocks
    last = torch.cat([zero, sub.flip(2).cumsum(2)], 2)  # last[r]: the last r sub-blocks
    return before[:, :, starts] + last[:, :, sub.shape[2] - stops]


def _remainder_sums(sub_z: Tensor, sub_s: Tensor, window: int, extension: int) -> tuple[Tensor, Tensor]:
    """:func:`remainder_feature_sums` from the sub-block sums."""
    u = _sub_block(window, extension)
    per, reach, count = window // u, extension // u, sub_z.shape[2]
    first = torch.arange(0, count, per, device=sub_z.device)  # each block's first sub-block
    starts, stops = (first - reach).clamp(min=0), (first + per + reach).clamp(max=count)
    return _outside(sub_z, starts, stops), _outside(sub_s, starts, stops)


def _key_features(
    k: Tensor,
    v: Tensor,
    real: Tensor | None,
    proj: Tensor,
    scale: float,
    window: int,
    extension: int,
    rows: int,
    compat: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Feature sums of the keys, ``rows`` at a time (padded length, a multiple of w and of rows' sub-blocks):
    per block over the keys outside it (:func:`remainder_feature_sums`) ``(B, H, T, m)``, ``(B, H, T, m, d)``;
    over all keys ``(B, H, 1, m)``; and the features' shift ``(B, H, 1, m)`` (their largest log over the real
    keys)."""

    def log_features(i: int, k_rows: Tensor) -> Tensor:
        log_k = favor_log_features(k_rows, proj, scale)
        return log_k if real is None else log_k.masked_fill(~real[:, None, i : i + rows, None], float("-inf"))

    # split, not sliced: a slice's backward writes a zero-filled full-size gradient per step
    steps = list(zip(range(0, k.shape[2], rows), k.split(rows, dim=2), v.split(rows, dim=2), strict=True))
    with torch.no_grad():
        peak = torch.stack([log_features(i, k_rows).amax(2, keepdim=True) for i, k_rows, _ in steps]).amax(0)
        peak = peak.nan_to_num(0.0, neginf=0.0)
        if compat and extension:
            peak = peak.clamp(min=0.0)  # official: out-of-range window slots hold log-feature 0
    u = _sub_block(window, extension)
    sums = [_sub_block_sums(torch.exp(log_features(i, k_rows) - peak), v_rows, u) for i, k_rows, v_rows in steps]
    sub_z, sub_s = torch.cat([z for z, _ in sums], 2), torch.cat([s for _, s in sums], 2)
    z_rest, s_rest = _remainder_sums(sub_z, sub_s, window, extension)
    return z_rest, s_rest, sub_z.sum(2, keepdim=True), peak


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
    the softmax with logit ``log phi_c(q_i) + log R_tc`` and value ``S_tc / R_tc``, ``R_tc = sum phi_c(k_j)``,
    ``S_tc = sum phi_c(k_j) v_j`` over the real keys j outside E_t (added up from prefix and suffix sums,
    not the total minus the local part, which cancels when one key dominates a feature inside E_t).
    Time O(N (w + 2e + m) d + N m d), memory O(N m + T m d).
    Chen et al., NeurIPS 2021 (arXiv 2110.15343); ``shared/specs/efficient-attention-eva-lara-longnet.md`` §8.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: must be False.
        window_size: w; overlap_window: widen key blocks by ``max(1, w // 2)``.
        projection: ``(H, m, d)`` FAVOR+ projection; default: orthogonal, drawn with seed 0 (raw QR under compat).
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
        gen = torch.Generator().manual_seed(0)
        projection = draw_projection(h, num_features, d, raw_qr=compat, generator=gen, dtype=q.dtype)
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
    q, k, v = (pad_to_multiple(x, w) for x in (q, k, v))
    real = None  # real keys of the padded length (None: all of them)
    if mask is not None or k.shape[2] != n:
        real = pad_to_multiple(torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask, w, dim=-1)
    rows = max(1, CHUNK_BYTES // (b * h * proj.shape[1] * q.element_size()) // w) * w
    z_rest, s_rest, z_all, peak = _key_features(k, v, real, proj, scale, w, e, rows, compat)  # (B, H, T, m), ...
    denom = z_rest.clamp(min=1e-3) if compat else z_rest
    kv = s_rest / torch.where(denom > 0, denom, torch.ones_like(denom))[..., None]  # (B, H, T, m, d)
    mass = z_rest + 1e-5 * z_all if compat else z_rest
    left = mass > 0
    none = torch.finfo(mass.dtype).min / 4  # no key left: weight exp(none) = 0, with finite gradients
    log_mass = torch.where(left, torch.log(torch.where(left, mass, 1.0)) + peak, none)
    outs, lses = [], []
    for i, q_rows in zip(range(0, q.shape[2], rows), q.split(rows, dim=2), strict=True):  # the mixture, by rows
        log_q = favor_log_features(q_rows, proj, scale)
        blocks = slice(i // w, i // w + log_q.shape[2] // w)
        logits = log_q.unflatten(2, (-1, w)) + log_mass[:, :, blocks, None]  # (B, H, rows / w, w, m)
        lse = torch.logsumexp(logits, dim=-1)
        probs = torch.exp(logits - lse.nan_to_num(0.0, neginf=0.0)[..., None])
        outs.append((probs @ kv[:, :, blocks]).flatten(2, 3))
        lses.append(lse.flatten(2, 3))
    lr_out, lr_lse = torch.cat(outs, 2)[:, :, :n], torch.cat(lses, 2)[:, :, :n]
    out, _ = merge_partials([local_out.to(q.dtype), lr_out], [local_lse.to(lr_lse.dtype), lr_lse])
    out = out.to(q.dtype)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)
