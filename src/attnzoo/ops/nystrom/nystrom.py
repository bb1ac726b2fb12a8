"""``nystrom``: Nystromformer attention (segment-mean landmarks, iterative pseudo-inverse, optional conv skip)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, zero_masked_rows
from attnzoo.ops.common.precision import fp32_core
from attnzoo.ops.nystrom.landmarks import add_segment_means_grad, iterative_pinv, segment_means
from attnzoo.ops.softmax import softmax_attention
from attnzoo.sparse.kernels import Kernel, pick_kernel

__all__ = ["COMPAT", "check_nystrom_args", "conv_skip", "nystrom_attention"]

COMPAT = ("none", "nystromformer-lra")


def check_nystrom_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    causal: bool,
    conv_weight: Tensor | None,
    compat: str,
    query_mask: Tensor | None = None,
) -> Tensor | None:
    """Shape, mask and flag checks shared by the fast path and the reference; returns the query mask.

    The query mask is ``query_mask``, or ``mask`` for self-attention (N == S) when it is None.
    """
    check_qkv(q, k, v)
    if causal:
        raise ValueError("nystrom cannot be causal: its landmarks average over the whole sequence")
    n, s_len = q.shape[-2], k.shape[-2]
    check_padding_mask(mask, q.shape[0], s_len, q.device, axis="S")
    check_padding_mask(query_mask, q.shape[0], n, q.device)
    if conv_weight is not None and n != s_len:
        raise ValueError(f"nystrom's conv skip adds V to the query rows, so it needs N == S; got N={n}, S={s_len}")
    if conv_weight is not None and (
        conv_weight.dim() != 4
        or conv_weight.shape[:2] != (q.shape[1], 1)
        or conv_weight.shape[-1] != 1
        or conv_weight.shape[2] % 2 == 0
    ):
        raise ValueError(f"conv_weight must have shape (H, 1, K, 1) with odd K, got {tuple(conv_weight.shape)}")
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPAT))}; got {compat!r}")
    return mask if query_mask is None and n == s_len else query_mask


def conv_skip(v: Tensor, weight: Tensor, mask: Tensor | None) -> Tensor:
    """Depthwise convolution of ``v * mask`` along the sequence (one ``(K, 1)`` kernel per head, zero padding).

    ``v``: ``(B, H, N, d)``; ``weight``: ``(H, 1, K, 1)``. The batch is folded into the channels (one image of
    ``B * H`` channels, the kernel repeated per batch row, its gradient summed back by ``repeat``): oneDNN runs
    the ``(B, H)`` layout of LRA (32 x 2 channels) about 10x slower than the folded one.
    """
    if mask is not None:
        v = v * mask[:, None, :, None].to(v.dtype)
    b, h, n, d = v.shape
    if not v.numel():  # nothing to convolve (conv2d refuses 0 groups or a kernel longer than the padded input)
        return v * 0
    folded = v.reshape(1, b * h, n, d)
    out = F.conv2d(folded, weight.to(v.dtype).repeat(b, 1, 1, 1), padding=(weight.shape[2] // 2, 0), groups=b * h)
    return out.view(b, h, n, d)


@fp32_core
def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    query_mask: Tensor | None = None,
    causal: bool = False,
    num_landmarks: int = 64,
    pinv_iterations: int = 6,
    conv_weight: Tensor | None = None,
    compat: str = "none",
) -> Tensor:
    """Nystrom approximation ``softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V`` (scores scaled by d^-1/2).

    Landmarks ``Q~, K~`` are means of m contiguous segments of the *real* queries and of the *real* keys
    (Nystromformer's split when m does not divide their number); pad keys are excluded from
    ``softmax(Q~ K^T)``. The three factors are defined for any N and S, so cross-attention (queries
    from one sequence, keys and values from another) is the same product with Q~ taken over the N
    queries and K~ over the S keys. A sequence with at most m real queries or at most m real keys gets
    exact softmax attention (O(m S d) or O(N m d); for self-attention: n <= m real tokens, as the official
    code does for m = N). ``pinv`` is the iterative one with a per-(batch, head) initialisation.
    O((N + S) m d + m^3). Paper: Xiong et al., "Nystromformer" (AAAI 2021); spec:
    ``diffuser-psf-butterfly-nystrom.md`` §5.3.

    Args:
        q: ``(B, H, N, d)``; k: ``(B, H, S, d)``; v: ``(B, H, S, dv)``.
        mask: ``(B, S)`` bool padding mask of the keys, True = real. Default: None.
        query_mask: ``(B, N)`` bool, True = real query (its landmarks average only those). Default: ``mask``
            when N == S (self-attention), else every query is real.
        causal: must be False (raises otherwise).
        num_landmarks: m. Default 64.
        pinv_iterations: iterations of the pseudo-inverse. Default 6.
        conv_weight: ``(H, 1, K, 1)`` depthwise kernel of the skip convolution on ``V * mask`` (odd K;
            35 in the LRA code), added to the output; None = no skip. Needs N == S.
        compat: ``"nystromformer-lra"`` reproduces mlpen/Nystromformer: segments over the padded lengths
            with zeroed pads averaged in (N2), one pinv initialisation over the whole batch (N1), exact
            softmax only when m reaches a padded length.

    Returns:
        ``(B, H, N, dv)``; padded query rows and rows without a real key give 0 (plus the conv skip).
        Computed in fp32 at least with autocast off (the pseudo-inverse iteration included), returned in
        the inputs' dtype or autocast's (:func:`attnzoo.ops.common.precision.fp32_core`).

    Raises:
        ValueError: ``causal=True``, bad shapes, masks or options, a conv skip with N != S.

    Reference: :func:`attnzoo.ops.nystrom.naive_nystrom_attention`.
    """
    query_mask = check_nystrom_args(q, k, v, mask, causal, conv_weight, compat, query_mask)
    b, _, n, _ = q.shape
    s_len, m, lra = k.shape[-2], num_landmarks, compat == "nystromformer-lra"
    if min(n, s_len) <= m:
        out = softmax_attention(q, k, v, mask=mask)
    else:
        out = _approximate(q, k, v, query_mask, mask, m, pinv_iterations, lra)
        if not lra and (mask is not None or query_mask is not None):
            q_real = torch.ones(b, n, dtype=torch.bool, device=q.device) if query_mask is None else query_mask
            k_real = torch.ones(b, s_len, dtype=torch.bool, device=q.device) if mask is None else mask
            few_keys = k_real.sum(-1) <= m
            few_queries = (q_real.sum(-1) <= m) & ~few_keys
            any_keys, any_queries = torch.stack([few_keys.any(), few_queries.any()]).tolist()  # one host sync
            if any_keys:
                out = torch.where(few_keys[:, None, None, None], _exact_few_keys(q, k, v, k_real, m), out)
            if any_queries:
                out = torch.where(few_queries[:, None, None, None], _exact_few_queries(q, k, v, q_real, mask, m), out)
    if conv_weight is not None:
        out = out + conv_skip(v, conv_weight, mask)
    return zero_masked_rows(out, query_mask)


def _approximate(
    q: Tensor, k: Tensor, v: Tensor, q_real: Tensor | None, k_real: Tensor | None, m: int, iterations: int, lra: bool
) -> Tensor:
    """The Nystrom product, scores scaled by d^-1/2 (``q_real``: (B, N), ``k_real``: (B, S) bool; None = all real).

    The two long factors run as fused attention calls (no (N x m) or (m x S) matrix is built, forward or
    backward): ``softmax(Q~ K^T) V`` is attention of the m landmark queries over the keys, and
    ``softmax(Q K~^T) W`` attention of the queries over the m landmark keys with values
    ``W = pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V`` (see :class:`_NystromProduct`).
    """
    q_segments, k_segments = q_real, k_real
    if lra:  # pads zeroed and averaged into segments of the padded sequences
        q = q if q_real is None else q * q_real[:, None, :, None].to(q.dtype)
        k = k if k_real is None else k * k_real[:, None, :, None].to(k.dtype)
        q_segments = k_segments = None
    bias = None
    if k_real is not None:  # the official large negative, not -inf: a row without real keys stays finite
        bias = torch.zeros(k_real.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~k_real, torch.finfo(q.dtype).min)[:, None, None, :]
    kernel = pick_kernel(q.device, q.dtype, equal_widths=q.shape[-1] == v.shape[-1])
    return _NystromProduct.apply(q, k, v, q_segments, k_segments, bias, m, iterations, lra, kernel)


def _landmark_values(q_land: Tensor, k_land: Tensor, land_out: Tensor, iterations: int, global_init: bool) -> Tensor:
    """``W = pinv(softmax(Q~ K~^T / sqrt(d))) softmax(Q~ K^T / sqrt(d)) V`` from its last factor: ``(B, H, m, dv)``."""
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2) * q_land.shape[-1] ** -0.5, dim=-1)  # (B, H, m, m)
    return iterative_pinv(kernel_2, iterations, global_init=global_init) @ land_out


class _NystromProduct(torch.autograd.Function):
    """The Nystrom product with a hand-written backward for its long parts: the two attention calls' backwards
    and the landmark means' (their gradients go straight into the attention gradients, in the inputs' layout:
    no (B, H, N, d) temporaries beyond the results). The small m x m part is differentiated by autograd,
    recomputed in the backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_real: Tensor | None,
        k_real: Tensor | None,
        bias: Tensor | None,
        m: int,
        iterations: int,
        global_init: bool,
        kernel: Kernel,
    ) -> Tensor:
        scale = q.shape[-1] ** -0.5
        q_land, k_land = segment_means(q, q_real, m), segment_means(k, k_real, m)  # (B, H, m, d)
        land_out, land_lse = kernel.forward(q_land, k, v, bias, False, scale)  # softmax(Q~ K^T) V
        values = _landmark_values(q_land, k_land, land_out, iterations, global_init)
        out, lse = kernel.forward(q, k_land, values, None, False, scale)
        ctx.save_for_backward(q, k, v, q_real, k_real, bias, q_land, k_land, land_out, land_lse, values, out, lse)
        ctx.iterations, ctx.global_init, ctx.kernel, ctx.scale = iterations, global_init, kernel, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor):  # type: ignore[override]
        q, k, v, q_real, k_real, bias, q_land, k_land, land_out, land_lse, values, out, lse = ctx.saved_tensors
        kernel, scale = ctx.kernel, ctx.scale
        dq, dk_land, d_values = kernel.backward(
            dout.contiguous(), None, q, k_land, values, out, lse, None, False, scale
        )
        with torch.enable_grad():
            small = [t.detach().requires_grad_() for t in (q_land, k_land, land_out)]
            recomputed = _landmark_values(*small, ctx.iterations, ctx.global_init)
            dq_land, dk_land_small, d_land_out = torch.autograd.grad(recomputed, small, d_values)
        dq_land_long, dk, dv = kernel.backward(
            d_land_out.contiguous(), None, q_land, k, v, land_out, land_lse, bias, False, scale
        )
        dq = add_segment_means_grad(dq, dq_land + dq_land_long, q_real, torch.empty_like(q))
        dk = add_segment_means_grad(dk, dk_land + dk_land_small, k_real, torch.empty_like(k))
        return dq, dk, dv.to(v.dtype), None, None, None, None, None, None, None


def _first_real(real: Tensor, m: int) -> Tensor:
    """Positions ``(B, m)`` of each row's real tokens first (in order), then its pads."""
    return torch.argsort((~real).to(torch.int8), dim=-1, stable=True)[:, :m]


def _exact_few_keys(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, m: int) -> Tensor:
    """Exact attention for sequences with at most m real keys: those keys compacted into m slots."""
    order = _first_real(mask, m)
    take = order[:, None, :, None]
    k_few = k.gather(2, take.expand(-1, k.shape[1], -1, k.shape[-1]))
    v_few = v.gather(2, take.expand(-1, v.shape[1], -1, v.shape[-1]))
    return softmax_attention(q, k_few, v_few, mask=mask.gather(1, order))


def _exact_few_queries(q: Tensor, k: Tensor, v: Tensor, q_real: Tensor, mask: Tensor | None, m: int) -> Tensor:
    """Exact attention for sequences with at most m real queries: those queries compacted into m slots."""
    take = _first_real(q_real, m)[:, None, :, None]
    q_few = q.gather(2, take.expand(-1, q.shape[1], -1, q.shape[-1]))
    out_few = softmax_attention(q_few, k, v, mask=mask)  # (B, H, m, dv)
    out = out_few.new_zeros(*q.shape[:3], v.shape[-1])
    return out.scatter(2, take.expand(-1, v.shape[1], -1, v.shape[-1]), out_few)
