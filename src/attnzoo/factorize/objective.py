"""The factorisation objective ``0.5 ||A - W_1 W_2 ... W_M||_F^2`` and its analytic gradient, sparse.

Every factor ``W_m`` shares one mask in the index layout of :func:`attnzoo.factorize.chord.chord_index`:
``values[m] (N, K)`` holds ``W_m[i, index[i, k]]``. A factor is applied to a dense ``(N, P)`` matrix by
``K`` row gathers (``W X``) or ``K`` row scatters (``W^T X``), ``O(N K P)`` each, so the ``N x N``
factors are never formed. The gradient is the official one (``sf_appr_test.m``): for factor ``m``,
``(L^T (L W_m R - A) R^T)`` on the mask, with ``L = W_1 ... W_{m-1}`` and ``R = W_{m+1} ... W_M``,
computed as one backward sweep of ``L^T G`` (``G`` the residual) against the stored suffix products ``R``.
"""

from __future__ import annotations

import torch

__all__ = ["apply_factor", "apply_factor_transposed", "chord_objective", "factor_product"]


def apply_factor(values: torch.Tensor, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W @ x`` for a factor in index layout: values ``(N, K)``, index ``(N, K)``, x ``(N, P)`` -> ``(N, P)``."""
    out = values[:, 0, None] * x.index_select(0, index[:, 0])
    for k in range(1, index.shape[1]):
        out.addcmul_(values[:, k, None], x.index_select(0, index[:, k]))
    return out


def apply_factor_transposed(values: torch.Tensor, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W^T @ x`` for a factor in index layout: values ``(N, K)``, index ``(N, K)``, x ``(N, P)`` -> ``(N, P)``."""
    out = torch.zeros_like(x)
    for k in range(index.shape[1]):
        out.index_add_(0, index[:, k], x * values[:, k, None])
    return out


def _suffixes(values: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
    """``[W_1...W_M, W_2...W_M, ..., W_M, I]``: M + 1 dense ``(N, N)`` suffix products."""
    n = index.shape[0]
    out = [torch.eye(n, dtype=values.dtype, device=values.device)]
    for m in range(values.shape[0] - 1, -1, -1):
        out.append(apply_factor(values[m], index, out[-1]))
    return out[::-1]


def factor_product(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The dense product ``W_1 W_2 ... W_M``: values ``(M, N, K)``, index ``(N, K)`` -> ``(N, N)``."""
    out = torch.eye(index.shape[0], dtype=values.dtype, device=values.device)
    for m in range(values.shape[0] - 1, -1, -1):
        out = apply_factor(values[m], index, out)
    return out


def chord_objective(
    values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective ``0.5 ||A - W_1...W_M||_F^2`` and its gradient with respect to ``values``.

    Args:
        values: ``(M, N, K)`` factor values in index layout.
        index: ``(N, K)`` int64 column of each slot.
        valid: ``(N, K)`` bool, False on padding slots (their gradient is 0).
        target: ``A``, ``(N, N)``.

    Returns:
        ``(loss, grad)``: a 0-d tensor and ``(M, N, K)``.

    Memory: ``M + 1`` dense ``(N, N)`` suffix products; time ``O(M N^2 K)``.
    """
    suffixes = _suffixes(values, index)
    residual = suffixes[0] - target
    loss = 0.5 * residual.square().sum()
    grad = torch.empty_like(values)
    left = residual  # (W_1 ... W_{m-1})^T G
    for m in range(values.shape[0]):
        right = suffixes[m + 1]  # W_{m+1} ... W_M
        for k in range(index.shape[1]):
            grad[m, :, k] = (left * right.index_select(0, index[:, k])).sum(1)
        if m + 1 < values.shape[0]:
            left = apply_factor_transposed(values[m], index, left)
    return loss, grad * valid
