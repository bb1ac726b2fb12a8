"""``nystrom``: Nystromformer attention (segment-mean landmarks, iterative pseudo-inverse, optional conv skip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, zero_masked_rows
from attnzoo.ops.nystrom.landmarks import iterative_pinv, segment_means
from attnzoo.ops.softmax import softmax_attention

__all__ = ["COMPAT", "check_nystrom_args", "conv_skip", "nystrom_attention"]

COMPAT = ("none", "nystromformer-lra")


def check_nystrom_args(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, conv_weight: Tensor | None, compat: str
) -> None:
    """Shape, mask and flag checks shared by the fast path and the reference."""
    check_qkv(q, k, v, cross=False)
    if causal:
        raise ValueError("nystrom cannot be causal: its landmarks average over the whole sequence")
    check_padding_mask(mask, q.shape[0], q.shape[-2], q.device)
    if conv_weight is not None and (
        conv_weight.dim() != 4
        or conv_weight.shape[:2] != (q.shape[1], 1)
        or conv_weight.shape[-1] != 1
        or conv_weight.shape[2] % 2 == 0
    ):
        raise ValueError(f"conv_weight must have shape (H, 1, K, 1) with odd K, got {tuple(conv_weight.shape)}")
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPAT))}; got {compat!r}")


def conv_skip(v: Tensor, weight: Tensor, mask: Tensor | None) -> Tensor:
    """Depthwise convolution of ``v * mask`` along the sequence (one ``(K, 1)`` kernel per head, zero padding)."""
    if mask is not None:
        v = v * mask[:, None, :, None].to(v.dtype)
    return F.conv2d(v, weight.to(v.dtype), padding=(weight.shape[2] // 2, 0), groups=v.shape[1])


def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_landmarks: int = 64,
    pinv_iterations: int = 6,
    conv_weight: Tensor | None = None,
    compat: str = "none",
) -> Tensor:
    """Nystrom approximation ``softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V`` (scores scaled by d^-1/2).

    Landmarks ``Q~, K~`` are means of m contiguous segments of the *real* tokens (Nystromformer's split
    when m does not divide n); pad keys are excluded from ``softmax(Q~ K^T)``. A sequence with n <= m real
    tokens gets exact softmax attention (as the official code does for m = N). ``pinv`` is the iterative
    one with a per-(batch, head) initialisation. O(N*m*d + m^3). Paper: Xiong et al., "Nystromformer"
    (AAAI 2021); spec: ``diffuser-psf-butterfly-nystrom.md`` §5.3.

    Args:
        q, k: ``(B, H, N, d)``; v: ``(B, H, N, dv)`` (self-attention only).
        mask: ``(B, N)`` bool padding mask, True = real token. Default: None.
        causal: must be False (raises otherwise).
        num_landmarks: m. Default 64.
        pinv_iterations: iterations of the pseudo-inverse. Default 6.
        conv_weight: ``(H, 1, K, 1)`` depthwise kernel of the skip convolution on ``V * mask`` (odd K;
            35 in the LRA code), added to the output; None = no skip.
        compat: ``"nystromformer-lra"`` reproduces mlpen/Nystromformer: segments over the padded length
            with zeroed pads averaged in (N2), one pinv initialisation over the whole batch (N1), exact
            softmax only when m equals the padded length.

    Returns:
        ``(B, H, N, dv)``; with every token padded the attention part is 0.

    Raises:
        ValueError: ``causal=True``, N != S, bad shapes, mask or options.

    Reference: :func:`attnzoo.ops.nystrom.naive_nystrom_attention`.
    """
    check_nystrom_args(q, k, v, mask, causal, conv_weight, compat)
    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(work), k.to(work), v.to(work)
    b, _, n, d = q.shape
    lra = compat == "nystromformer-lra"
    if n <= num_landmarks:
        out = softmax_attention(q, k, v, mask=mask)
    else:
        real = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
        out = _approximate(q * d**-0.25, k * d**-0.25, v, real, num_landmarks, pinv_iterations, lra)
        if mask is not None and not lra:
            counts = mask.sum(-1)
            small = counts <= num_landmarks
            if bool(small.any()):  # one host sync, only with a padding mask
                out = torch.where(small[:, None, None, None], _exact_few(q, k, v, mask, num_landmarks), out)
    if conv_weight is not None:
        out = out + conv_skip(v, conv_weight, mask)
    return zero_masked_rows(out, mask).to(out_dtype)


def _approximate(q: Tensor, k: Tensor, v: Tensor, real: Tensor, m: int, iterations: int, lra: bool) -> Tensor:
    """The Nystrom product on pre-scaled q, k (``real``: (B, N) bool)."""
    if lra:  # pads zeroed and averaged into segments of the padded sequence
        keep = real[:, None, :, None].to(q.dtype)
        q, k = q * keep, k * keep
    segments = torch.ones_like(real) if lra else real
    q_land, k_land = segment_means(q, segments, m), segment_means(k, segments, m)  # (B, H, m, d)
    kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)  # (B, H, N, m)
    kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # (B, H, m, m)
    scores_3 = (q_land @ k.transpose(-1, -2)).masked_fill(~real[:, None, None, :], torch.finfo(q.dtype).min)
    kernel_3 = torch.softmax(scores_3, dim=-1)  # (B, H, m, N)
    return kernel_1 @ (iterative_pinv(kernel_2, iterations, global_init=lra) @ (kernel_3 @ v))


def _exact_few(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, m: int) -> Tensor:
    """Exact attention for sequences with at most m real tokens: their real keys compacted into m slots."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :m]  # real positions first
    take = order[:, None, :, None]
    k_few = k.gather(2, take.expand(-1, k.shape[1], -1, k.shape[-1]))
    v_few = v.gather(2, take.expand(-1, v.shape[1], -1, v.shape[-1]))
    return softmax_attention(q, k_few, v_few, mask=mask.gather(1, order))
