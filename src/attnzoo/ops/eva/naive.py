"""Dense references for EVA and causal EVA: N x N local logits, explicit chunk matrices, one joint softmax."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask
from attnzoo.ops.lara.naive import naive_segment_matrix
from attnzoo.ops.local.naive import _window_bias, _window_mask
from attnzoo.ops.local.window import LocalWindow

__all__ = ["naive_causal_eva_attention", "naive_eva_attention", "naive_t5_bucket"]


def naive_t5_bucket(rel: int, num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    """T5 bucket of one relative position ``key - query`` (spec §6.1), in plain Python."""
    n, base = -rel, 0
    if bidirectional:
        num_buckets //= 2
        base = num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return base + n
    return base + min(
        num_buckets - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    )


def _t5_dense(table: Tensor, n: int, reach: int, shift: int, bidirectional: bool) -> Tensor:
    """``(H, N, N)`` T5 bias over all pairs (unscaled)."""
    span = reach + abs(shift)  # pairs farther apart lie outside every window (masked); bucket 0 there
    lookup = {
        r: naive_t5_bucket(r + shift, table.shape[0], reach, bidirectional) if abs(r) < span else 0
        for r in range(-n, n + 1)
    }
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    buckets = torch.tensor([[lookup[int(r)] for r in row] for row in rel], device=table.device)
    return table[buckets].permute(2, 0, 1)


def _chunk_matrix(real: Tensor, n: int, w: int, num: int, e: int, grid: tuple[int, int] | None, compat: bool):
    """``(B, C, N)`` chunk membership (real tokens only) and ``(B, C)`` mean denominators."""
    b = real.shape[0]
    if grid is None and not compat:
        member = naive_segment_matrix(real, num).to(torch.bool)
        return member, member.sum(-1).clamp(min=1).to(torch.float64)
    pos = torch.arange(n)
    if grid is None:
        r = max(1, (math.ceil(n / w) * w) // num)
        starts = torch.arange((math.ceil(n / w) * w) // r) * r
        member = (pos[None] >= starts[:, None] - e) & (pos[None] < starts[:, None] + r + e)
        denom = torch.full((b, member.shape[0]), float(r + 2 * e), dtype=torch.float64)
        return member[None] & real[:, None], denom
    height, width = grid
    r = max(1, math.isqrt(n // num))
    ee = e if compat else 0
    rows, cols = (height // r, width // r) if compat else (math.ceil(height / r), math.ceil(width / r))
    cy, cx = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
    y, x = pos // width, pos % width
    member = (y[None] >= cy[:, None] * r - ee) & (y[None] < cy[:, None] * r + r + ee)
    member &= (x[None] >= cx[:, None] * r - ee) & (x[None] < cx[:, None] * r + r + ee)
    member = member[None] & real[:, None]
    denom = torch.full((b, rows * cols), float((r + 2 * ee) ** 2), dtype=torch.float64)
    return member, denom if compat else member.sum(-1).clamp(min=1).to(torch.float64)


def _joint(q, k, v, local_logits, k_hat, beta, chunk_allowed, real, scale):
    """One softmax over ``[local logits (N), chunk logits (C)]`` per query, rows of padded queries 0."""
    chunk_logits = scale * torch.einsum("bhnd,bhcd->bhnc", q, k_hat).masked_fill(~chunk_allowed, float("-inf"))
    probs = torch.softmax(torch.cat([local_logits, chunk_logits], dim=-1), dim=-1).nan_to_num(0.0)
    n = q.shape[2]
    out = probs[..., :n] @ v + probs[..., n:] @ beta
    return out * real[:, None, :, None]


def _summaries(q, k, v, member, denom, chunk_keys, noise, scale):
    """``k_hat, beta`` from the dense membership matrix (spec §6 steps 5-9)."""
    a = member.to(q.dtype)
    q_bar = torch.einsum("bcn,bhnd->bhcd", a, q) / denom[:, None, :, None]
    k_bar = torch.einsum("bcn,bhnd->bhcd", a, k) / denom[:, None, :, None]
    k_hat, mu = chunk_keys(q_bar, k_bar)
    omega = mu if noise is None else mu + noise
    logits = scale * (torch.einsum("bhcd,bhnd->bhcn", omega, k) - 0.5 * (k * k).sum(-1)[:, :, None, :])
    probs = torch.softmax(logits.masked_fill(~member[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
    return k_hat, probs @ v


def _mean_keys(q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
    return k_bar, (q_bar + k_bar) / 2


def naive_eva_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    window_size: int = 4,
    num_landmarks: int = 49,
    overlap_window: bool = False,
    grid: tuple[int, int] | None = None,
    rpe_table: Tensor | None = None,
    t5_table: Tensor | None = None,
    chunk_keys: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    noise: Tensor | None = None,
    compat: bool = False,
    scale: float | None = None,
    executor: str = "auto",
) -> Tensor:
    """Dense EVA with the signature of :func:`attnzoo.ops.eva.eva_attention` (tests only; ``executor`` unused)."""
    if causal:
        raise ValueError("eva cannot be causal")
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    s = d**-0.5 if scale is None else scale
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    window = LocalWindow.resolve(mode="blockwise", window_size=window_size, overlap_window=overlap_window, grid=grid)
    e = window.extension
    allowed = _window_mask(window, n, q.device)  # (N, N)
    logits = s * torch.einsum("bhnd,bhmd->bhnm", q, k)
    if rpe_table is not None:
        logits = logits + _window_bias(window, rpe_table, n)[None]
    if t5_table is not None:
        logits = logits + s * _t5_dense(t5_table, n, window_size + e, e if compat else 0, True)[None]
    logits = logits.masked_fill(~(allowed[None, None] & real[:, None, None, :]), float("-inf"))
    member, denom = _chunk_matrix(real, n, window_size, num_landmarks, e, grid, compat)
    k_hat, beta = _summaries(q, k, v, member, denom, chunk_keys or _mean_keys, noise, s)
    if compat:
        chunk_allowed = torch.ones(b, 1, n, member.shape[1], dtype=torch.bool)
    else:
        outside = torch.einsum("bcm,nm->bnc", member.to(torch.float64), (~allowed).to(torch.float64)) > 0
        chunk_allowed = (outside & member.any(-1)[:, None, :])[:, None]
    return _joint(q, k, v, logits, k_hat, beta, chunk_allowed, real, s)


def _causal_keys(q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
    return k_bar, q_bar + k_bar


def naive_causal_eva_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = True,
    window_size: int = 4,
    chunk_size: int | None = None,
    num_chunks: int | None = None,
    overlap_window: bool = False,
    t5_table: Tensor | None = None,
    chunk_keys: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    noise: Tensor | None = None,
    dropout_p: float = 0.0,
    compat: bool = False,
    scale: float | None = None,
    executor: str = "auto",
) -> Tensor:
    """Dense causal EVA with the signature of :func:`attnzoo.ops.eva.causal_eva_attention` (tests; no dropout)."""
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    s = d**-0.5 if scale is None else scale
    w = window_size
    e = max(1, w) if overlap_window else 0
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    start = (i // w) * w
    allowed = (j >= start - e) & (j < start + w) & ((j <= i) if causal else True)
    logits = s * torch.einsum("bhnd,bhmd->bhnm", q, k)
    if t5_table is not None:
        logits = logits + s * _t5_dense(t5_table, n, w + e, e if compat else 0, False)[None]
    logits = logits.masked_fill(~(allowed[None, None] & real[:, None, None, :]), float("-inf"))
    padded = math.ceil(n / w) * w
    r = chunk_size or (max(1, padded // num_chunks) if num_chunks else w)
    c = torch.arange(padded // r)[:, None]
    member = ((j >= c * r) & (j < c * r + r))[None] & real[:, None]  # (B, C, N)
    denom = torch.full((b, c.shape[0]), float(r)) if compat else member.sum(-1).clamp(min=1).to(torch.float64)
    k_hat, beta = _summaries(q, k, v, member, denom, chunk_keys or _causal_keys, noise, s)
    first, last = (c * r).T, (c * r + r - 1).T  # (1, C) first and last position of each chunk
    if compat:
        visible = (i // r > c.T) if causal else torch.ones(n, c.shape[0], dtype=torch.bool)
    elif causal:
        visible = last < start - e
    else:
        visible = (first < start - e) | (last >= start + w)
    chunk_allowed = (visible[None] & (member.any(-1)[:, None, :] | compat))[:, None]
    return _joint(q, k, v, logits, k_hat, beta, chunk_allowed, real, s)
