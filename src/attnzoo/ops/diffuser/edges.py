"""Edge-list primitives on ``(B, H, N, d)`` tensors: sampled dot products and sparse products.

Both run over the edges in chunks (no ``(B, H, E, d)`` temporary) with custom backwards that
save only their inputs, so memory is O(B H (E + N d)) and time O(B H E d).

Shape legend: B batch, H heads, N nodes, d width, E edges (``src -> dst``: dst reads src).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["edge_dots", "edge_matmul"]

CHUNK_BYTES = 8 * 2**20


def _chunks(num_edges: int, x: Tensor) -> list[slice]:
    per_edge = max(1, x.shape[0] * x.shape[1] * x.shape[-1] * x.element_size())
    step = max(1, CHUNK_BYTES // per_edge)
    return [slice(s, min(s + step, num_edges)) for s in range(0, num_edges, step)]


def _spmm(values: Tensor, x: Tensor, read: Tensor, write: Tensor, n_out: int) -> Tensor:
    """``out[:, :, write[e]] += values[:, :, e] * x[:, :, read[e]]`` -> ``(B, H, n_out, d)``."""
    out = x.new_zeros(*x.shape[:2], n_out, x.shape[-1])
    for part in _chunks(read.numel(), x):
        gathered = x.index_select(2, read[part]) * values[:, :, part, None]
        out.index_add_(2, write[part], gathered)
    return out


def _sddmm(a: Tensor, b: Tensor, rows_a: Tensor, rows_b: Tensor) -> Tensor:
    """``out[:, :, e] = <a[:, :, rows_a[e]], b[:, :, rows_b[e]]>`` -> ``(B, H, E)``."""
    out = a.new_empty(*a.shape[:2], rows_a.numel())
    for part in _chunks(rows_a.numel(), a):
        out[:, :, part] = (a.index_select(2, rows_a[part]) * b.index_select(2, rows_b[part])).sum(-1)
    return out


class _EdgeMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, x: Tensor, src: Tensor, dst: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, x, src, dst)
        return _spmm(values, x, src, dst, x.shape[2])

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        values, x, src, dst = ctx.saved_tensors
        grad = grad.contiguous()
        d_values = _sddmm(grad, x, dst, src) if ctx.needs_input_grad[0] else None
        d_x = _spmm(values, grad, dst, src, x.shape[2]) if ctx.needs_input_grad[1] else None
        return d_values, d_x, None, None


class _EdgeDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, src: Tensor, dst: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, k, src, dst)
        return _sddmm(q, k, dst, src)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        q, k, src, dst = ctx.saved_tensors
        grad = grad.contiguous()
        d_q = _spmm(grad, k, src, dst, q.shape[2]) if ctx.needs_input_grad[0] else None
        d_k = _spmm(grad, q, dst, src, k.shape[2]) if ctx.needs_input_grad[1] else None
        return d_q, d_k, None, None


def edge_matmul(values: Tensor, x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Sparse ``A x`` with ``A[dst[e], src[e]] = values[:, :, e]``.

    Args:
        values: ``(B, H, E)``.
        x: ``(B, H, N, d)``.
        src, dst: ``(E,)`` long node indices.

    Returns:
        ``(B, H, N, d)``.
    """
    return _EdgeMatmul.apply(values.contiguous(), x.contiguous(), src, dst)


def edge_dots(q: Tensor, k: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Sampled dot products ``<q[dst[e]], k[src[e]]>``: ``q, k (B, H, N, d) -> (B, H, E)``."""
    return _EdgeDots.apply(q.contiguous(), k.contiguous(), src, dst)
