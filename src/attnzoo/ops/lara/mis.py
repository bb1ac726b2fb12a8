"""LARA: linear randomized attention by multiple importance sampling (efficient-attention ``LinearRA``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.lara.segments import real_token_segments, segment_mean
from attnzoo.options import check_choice, check_float, check_int
from attnzoo.sparse import merge_partials

__all__ = ["MIS_TYPES", "Landmarks", "lara_attention", "lara_landmarks", "rf_log"]

MIS_TYPES = ("mis-opt", "mis-bh", "mis-biased")


class Landmarks(NamedTuple):
    """Per-head landmarks: ``q, k: (B, H, C, d)`` and ``valid: (B, C)`` bool (False = an empty segment)."""

    q: Tensor
    k: Tensor
    valid: Tensor


def rf_log(omega: Tensor, x: Tensor, scale: float) -> Tensor:
    """``l(w, x) = s (w . x) - s |x|^2 / 2`` for every pair: ``(..., S, d) x (..., N, d) -> (..., S, N)`` (spec ℓ)."""
    return scale * (omega @ x.transpose(-1, -2) - 0.5 * x.square().sum(-1)[..., None, :])


def lara_landmarks(q: Tensor, k: Tensor, mask: Tensor | None, num_landmarks: int, count_padding: bool) -> Landmarks:
    """Segment means of ``q, k: (B, H, N, d)`` as landmarks (spec §5 step 2, 1D).

    Default: each row's real tokens are cut into ``min(L, n_real)`` segments (padding changes nothing).
    ``count_padding`` (official, quirk E4): the whole padded length is cut and pad rows count in the means
    (:func:`lara_attention` zeroes them first, as the official code does).
    """
    b, _, n, _ = q.shape
    if count_padding:  # pad rows enter as given (the official code zeroes q, k first, then maps them)
        seg = real_token_segments(None, b, n, num_landmarks, q.device)
        return Landmarks(segment_mean(q, seg), segment_mean(k, seg), seg.nonempty())
    seg = real_token_segments(mask, b, n, num_landmarks, q.device)
    return Landmarks(segment_mean(q, seg, mask), segment_mean(k, seg, mask), seg.nonempty())


QUERY_CHUNK_BYTES = 4 * 2**20
"""Queries per step of the mixture: as many as keep one ``(B, H, S, rows)`` tensor under this size (whole-sequence
ones are 32 MiB at N = 16384, 8 heads, 64 samples, and glibc maps those afresh on every call here)."""


class _Mixture(NamedTuple):
    """The query-independent parts of spec §5 step 7: ``cross_lse``, ``own`` ``(B, H, S)`` (``logsumexp_c'
    Lambda[c, c']``, ``Lambda[c, c]``) and, for ``mis-opt``, the query softmax's normaliser ``(B, H, C)``."""

    total: Tensor
    own: Tensor
    query_lse: Tensor | None


def _mixture(
    omega: Tensor,
    mu: Tensor,
    q: Tensor,
    lm: Landmarks,
    valid: Tensor,
    query_ok: Tensor | None,
    mis_type: str,
    scale: float,
    rows: int,
) -> _Mixture:
    """:class:`_Mixture` (the query softmax's normaliser over all queries, ``rows`` at a time)."""
    bias = torch.zeros(valid.shape, dtype=omega.dtype, device=omega.device).masked_fill(~valid, float("-inf"))
    cross = rf_log(omega, mu, scale) + bias[:, None, None, :]  # Lambda[c, c'] over valid c'
    own = torch.diagonal(cross, dim1=-2, dim2=-1)  # Lambda[c, c]
    total = torch.logsumexp(cross, dim=-1)
    if mis_type != "mis-opt":
        return _Mixture(total, own, None)
    parts = [
        torch.logsumexp(_query_scores(lm.q, q_rows, None if query_ok is None else query_ok[:, i : i + rows], scale), -1)
        for i, q_rows in zip(range(0, q.shape[2], rows), q.split(rows, dim=2), strict=True)
    ]
    return _Mixture(total, own, torch.logsumexp(torch.stack(parts, -1), -1))


def _query_scores(landmarks: Tensor, q_rows: Tensor, ok_rows: Tensor | None, scale: float) -> Tensor:
    """``s q~_c . q_n`` for the rows' queries, ``-inf`` at padding: ``(B, H, C, rows)``."""
    t = (scale * landmarks) @ q_rows.transpose(-1, -2)
    return t if ok_rows is None else t.masked_fill(~ok_rows[:, None, None, :], float("-inf"))


def _mixture_logits(
    mix: _Mixture,
    omega: Tensor,
    mu: Tensor,
    q_rows: Tensor,
    ok_rows: Tensor | None,
    lm: Landmarks,
    mis_type: str,
    alpha_coeff: float,
    scale: float,
) -> Tensor:
    """``log alpha[c, n] - log g_c`` of spec §5 step 7 for a block of queries: ``(B, H, S, rows)`` (S samples)."""
    s_count = omega.shape[2]
    if mis_type == "mis-bh":
        return (-mix.total)[..., None]
    if mis_type == "mis-biased":
        return scale * mu @ q_rows.transpose(-1, -2) - mix.total[..., None]
    assert mix.query_lse is not None
    balance = torch.exp(mix.own - mix.total.nan_to_num(0.0, neginf=0.0))  # (B, H, S)
    shift = mix.query_lse.nan_to_num(0.0, neginf=0.0)[..., None]  # no real query: every t is exp(-inf) = 0
    t = torch.exp(_query_scores(lm.q, q_rows, ok_rows, scale) - shift)  # softmax over all queries n
    weights = lm.valid[:, None, :, None].to(t.dtype)
    t_mean = (t * weights).sum(2, keepdim=True) / weights.sum(2, keepdim=True).clamp(min=1)
    t = t.repeat(1, 1, s_count // t.shape[2], 1)
    alpha = (balance[..., None] + alpha_coeff * (t - t_mean)).clamp(min=1e-8)
    return alpha.log() - mix.own[..., None]


def _sample_attention(
    omega: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, rows: int
) -> tuple[Tensor, Tensor]:
    """``kappa_c = sum_m softmax_m(l(w_c, k_m)) v_m`` ``(B, H, S, dv)`` and ``logsumexp_m l(w_c, k_m)`` ``(B, H, S, 1)``
    (0 where no key is real), by blocks of ``rows`` keys merged by their log-sum-exp (spec §5 steps 5-6)."""
    kappas, lses = [], []
    masks = [None] * len(range(0, k.shape[2], rows)) if mask is None else mask.split(rows, -1)
    for k_rows, v_rows, real in zip(k.split(rows, dim=2), v.split(rows, dim=2), masks, strict=True):
        logits = rf_log(omega, k_rows, scale)  # l(w_c, k_m): (B, H, S, rows)
        if real is not None:
            logits = logits.masked_fill(~real[:, None, None, :], float("-inf"))
        lse = torch.logsumexp(logits, dim=-1)
        kappas.append(torch.exp(logits - lse.nan_to_num(0.0, neginf=0.0)[..., None]) @ v_rows)
        lses.append(lse)
    kappa, total = (kappas[0], lses[0]) if len(kappas) == 1 else merge_partials(kappas, lses)
    return kappa, total.nan_to_num(0.0, neginf=0.0)[..., None]


def lara_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_landmarks: int = 49,
    mis_type: str = "mis-opt",
    alpha_coeff: float = 1.0,
    landmarks: Landmarks | None = None,
    noise: Tensor | None = None,
    antithetic: bool = False,
    count_padding: bool = False,
    scale: float | None = None,
) -> Tensor:
    """LARA: self-normalised multiple importance sampling of randomized attention with C landmark proposals.

    Proposal c is N(mu_c, I) with ``mu_c = q~_c + k~_c`` (landmarks, segment means by default). For sample
    ``w_c`` (``mu_c``, or ``mu_c + noise_c`` in training) ``kappa_c = sum_m softmax_m(l(w_c, k_m)) v_m`` and
    ``y_n = sum_c softmax_c(log alpha_cn + l(w_c, q_n) + logsumexp_m l(w_c, k_m) - log g_c) kappa_c``
    (spec §5 steps 3-9; ``l(w, x) = s w.x - s|x|^2/2``). Time O(N C d + C^2 d), memory O(N C).
    Zheng et al., ICML 2022 (arXiv 2204.04667); ``shared/specs/efficient-attention-eva-lara-longnet.md`` §5.

    Args:
        q, k, v: ``(B, H, N, d)`` (v may have its own width).
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: must be False (LARA has no causal form).
        num_landmarks: L, the number of segments (default 49, official).
        mis_type: ``mis-opt`` (balance heuristic + ``alpha_coeff`` times the query-normalised landmark
            correction), ``mis-bh`` (balance heuristic), ``mis-biased``.
        landmarks: precomputed :class:`Landmarks` (the module's learned proposals); default segment means.
        noise: ``(B, H, S, d)`` Gaussian draws, S a multiple of C (training samples ``w = mu + noise``);
            ``None`` = eval (``w = mu``).
        antithetic: use ``[mu + noise, mu - noise]`` (2C samples from a ``(B, H, C, d)`` draw).
        count_padding: efficient-attention's 1D quirk E4 (zeroed pads count in the landmark means and
            in the query softmax of ``mis-opt``); default False (padding changes no real row).
        scale: s, default ``d ** -0.5``.

    Returns:
        ``(B, H, N, dv)``; rows of padded queries are 0.

    Raises:
        ValueError: ``causal=True``, bad options or shapes.

    Reference: :func:`attnzoo.ops.lara.naive_lara_attention`.
    """
    check_qkv(q, k, v, cross=False)
    if causal:
        raise ValueError("lara cannot be causal (the official LinearRA is non-causal)")
    check_int("num_landmarks", num_landmarks, minimum=1)
    check_choice("mis_type", mis_type, MIS_TYPES)
    check_float("alpha_coeff", alpha_coeff)
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    scale = d**-0.5 if scale is None else float(scale)
    if count_padding and mask is not None:
        keep = mask[:, None, :, None].to(q.dtype)
        q, k, v = q * keep, k * keep, v * keep
    lm = lara_landmarks(q, k, mask, num_landmarks, count_padding) if landmarks is None else landmarks
    mu = lm.q + lm.k  # (B, H, C, d)
    eps = None if noise is None else (torch.cat([noise, -noise], dim=2) if antithetic else noise)
    if eps is not None and eps.shape[2] % mu.shape[2]:
        raise ValueError(f"noise must have a multiple of C={mu.shape[2]} samples, got shape {tuple(noise.shape)}")
    repeats = 1 if eps is None else eps.shape[2] // mu.shape[2]
    mu = mu.repeat(1, 1, repeats, 1)
    omega = mu if eps is None else mu + eps
    valid = lm.valid.repeat(1, repeats)  # (B, S)
    rows = max(1, QUERY_CHUNK_BYTES // (b * q.shape[1] * omega.shape[2] * q.element_size()))
    kappa, key_lse = _sample_attention(omega, k, v, mask, scale, rows)
    query_ok = None if count_padding else mask
    mix = _mixture(omega, mu, q, lm, valid, query_ok, mis_type, scale, rows)
    outs = []
    for i, q_rows in zip(range(0, n, rows), q.split(rows, dim=2), strict=True):
        ok_rows = None if query_ok is None else query_ok[:, i : i + rows]
        logits = _mixture_logits(mix, omega, mu, q_rows, ok_rows, lm, mis_type, alpha_coeff, scale)
        logits = logits + (scale * omega) @ q_rows.transpose(-1, -2) + key_lse
        logits = logits.masked_fill(~valid[:, None, :, None], float("-inf"))
        weights = torch.softmax(logits, dim=2).nan_to_num(0.0)
        outs.append(weights.transpose(-1, -2) @ kappa)
    out = torch.cat(outs, dim=2)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)
