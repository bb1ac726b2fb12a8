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

import torch
from torch import Tensor

__all__ = ["draw_projection", "favor_log_features", "projection_terms"]


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
