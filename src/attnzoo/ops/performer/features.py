"""FAVOR+ random features (Choromanski et al. 2021): projection draws and the positive feature map.

Reusable on their own (ScatterBrain builds its low-rank part from :func:`favor_log_features`).
For ``omega ~ N(0, I_d)`` and temperature ``s`` (default ``d^-1/2``)

    xi(x, omega) = exp(sqrt(s) omega.x - s |x|^2 / 2),     E_omega[xi(q, omega) xi(k, omega)] = exp(s q.k),

so with ``m`` draws ``phi(x) = m^-1/2 [xi(x, omega_1), ..., xi(x, omega_m)]`` gives an unbiased
estimate ``phi(q).phi(k)`` of the softmax kernel. Orthogonal draws (blocks of d orthogonal
directions with chi-distributed norms) keep each ``omega`` marginally N(0, I) and lower the variance --
provided the blocks are Haar-distributed: the Q of a Householder QR is not (LAPACK makes R's diagonal
negative, so row 0 of every block has a negative first coordinate), and multiplying Q's columns by
``sign(diag R)`` makes it so. The official codes skip that step (``raw_qr``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["draw_projection", "favor_log_features", "projection_terms", "stabilised_exp"]


def draw_projection(
    heads: int,
    num_features: int,
    dim: int,
    *,
    orthogonal: bool = True,
    raw_qr: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random projection ``W`` of shape ``(H, m, d)``: ``m`` draws ``omega`` per head, each marginally N(0, I_d).

    ``orthogonal=True`` (FAVOR+, as efficient-attention's ``eval_proj`` and performer-pytorch): per head,
    ``ceil(m / d)`` blocks of ``d`` orthonormal rows (QR of a Gaussian matrix), the last block truncated,
    row j rescaled by the norm of an independent N(0, I_d) vector. ``False``: i.i.d. Gaussian rows (the
    draw efficient-attention makes at every training step). Drawn on the CPU in float64 from
    ``generator`` (default: torch's global RNG), then cast.

    Args:
        heads: H; num_features: m; dim: d.
        raw_qr: keep the raw ``Q`` of ``torch.linalg.qr`` as the official codes do (efficient-attention,
            performer-pytorch): its rows are not marginally N(0, I) (row 0 of a block has a negative first
            coordinate), a bias that stays as m grows. Default False: columns times ``sign(diag R)`` (Haar).

    Returns:
        ``(H, m, d)`` tensor of ``dtype`` on ``device``.
    """
    if orthogonal:
        blocks = -(-num_features // dim)
        gauss = torch.randn(heads, blocks, dim, dim, generator=generator, dtype=torch.float64)
        ortho, upper = torch.linalg.qr(gauss)
        if not raw_qr:
            signs = torch.where(upper.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(ortho.dtype)
            ortho = ortho * signs[..., None, :]
        rows = ortho.transpose(-1, -2).reshape(heads, blocks * dim, dim)[:, :num_features]
        norms = torch.randn(heads, num_features, dim, generator=generator, dtype=torch.float64).norm(dim=-1)
        proj = rows * norms[..., None]
    else:
        proj = torch.randn(heads, num_features, dim, generator=generator, dtype=torch.float64)
    return proj.to(dtype=dtype, device=device)


def projection_terms(x: Tensor, projection: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(sqrt(s) W x, s |x|^2 / 2)`` for ``x: (B, H, N, d)``, ``W: (H, m, d)``.

    Returns:
        shapes ``(B, H, N, m)`` and ``(B, H, N, 1)``.
    """
    proj = (projection * math.sqrt(scale)).to(x.dtype)  # scale the small (m x d) matrix, not the (N x m) product
    return x @ proj.transpose(-1, -2), x.square().sum(-1, keepdim=True) * (scale / 2)


def favor_log_features(x: Tensor, projection: Tensor, scale: float) -> Tensor:
    """``log phi(x)`` without any stabiliser: ``sqrt(s) W x - s |x|^2 / 2 - ln(m) / 2``.

    Args:
        x: ``(B, H, N, d)``.
        projection: ``W``, ``(H, m, d)`` (see :func:`draw_projection`).
        scale: temperature ``s`` of the approximated kernel ``exp(s q.k)`` (softmax attention: ``d^-1/2``).

    Returns:
        ``(B, H, N, m)``; ``exp(log_q) @ exp(log_k).T`` is the unbiased kernel estimate.
    """
    proj_term, norm_term = projection_terms(x, projection, scale)
    return proj_term - norm_term - 0.5 * math.log(projection.shape[-2])


def stabilised_exp(
    proj_term: Tensor,
    extra: Tensor,
    *,
    over_tokens: bool,
    through_max: bool,
    max_keep: Tensor | None = None,
    zero_keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``exp(p - c - extra)`` with the stabiliser ``c = max p`` and ``c`` itself, in one fused autograd op.

    ``c`` is the max over the features of each row, or (``over_tokens``) over features and tokens of each
    (batch, head). Autograd of the plain expression writes about six full ``(B, H, N, m)`` tensors in the
    backward (the broadcast subtraction's negated gradient, the max's tie mask and share); this op writes one.

    Args:
        proj_term: ``p``, ``(B, H, N, m)``.
        extra: ``(B, H, N, 1)`` (or broadcastable), differentiable: the rest of the row's shift.
        over_tokens: the max over ``(N, m)`` per (batch, head) instead of over ``m`` per row.
        through_max: let gradients flow through ``c`` (to the maximal element; where two elements tie
            at the maximum one of them takes it, where ``torch.amax`` would split it), as performer-pytorch;
            otherwise ``c`` is a detached constant.
        max_keep: ``(B, 1, N, 1)`` bool, True = the token takes part in the max (None: all).
        zero_keep: ``(B, 1, N, 1)`` bool, False = the output row is 0 (None: none).

    Returns:
        ``(features (B, H, N, m), c)`` with ``c`` ``(B, H, 1, 1)`` (``over_tokens``) or ``(B, H, N, 1)``;
        ``c = -inf`` where no element takes part (its features are then computed with ``c = 0``).
    """
    return _StabilisedExp.apply(proj_term, extra, over_tokens, through_max, max_keep, zero_keep)


class _StabilisedExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, p: Tensor, extra: Tensor, over_tokens: bool, through_max: bool, max_keep, zero_keep):  # type: ignore[override]
        candidates = p if max_keep is None else p.masked_fill(~max_keep, -math.inf)
        flat = candidates.flatten(-2) if over_tokens else candidates
        top, index = flat.max(-1, keepdim=True)
        if over_tokens:
            top = top[..., None]
        empty = top == -math.inf  # nothing took part: c is a constant
        shift = top.masked_fill(empty, 0.0) + extra
        out = (p - shift).exp_()
        if zero_keep is not None:
            out.masked_fill_(~zero_keep, 0.0)
        ctx.save_for_backward(out, index, empty)
        ctx.over_tokens, ctx.through_max, ctx.extra_shape = over_tokens, through_max, extra.shape
        ctx.mark_non_differentiable(index)
        return out, top

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_top: Tensor | None):  # type: ignore[override]
        out, index, empty = ctx.saved_tensors
        grad = d_out * out  # d loss / d (p - c - extra); 0 at zeroed rows
        d_shift = grad.sum(-1, keepdim=True)  # minus the gradient of the row's shift
        if ctx.through_max:
            to_max = d_shift.sum(-2, keepdim=True) if ctx.over_tokens else d_shift
            to_max = (-to_max if d_top is None else d_top - to_max).masked_fill(empty, 0.0)
            flat = grad.flatten(-2) if ctx.over_tokens else grad
            flat.scatter_add_(-1, index, to_max.flatten(-2) if ctx.over_tokens else to_max)
        d_extra = (-d_shift).sum_to_size(ctx.extra_shape)
        return grad, d_extra, None, None, None, None
