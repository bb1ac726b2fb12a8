"""Reformer's angular LSH as HF transformers 3.3.1 ``LSHSelfAttention`` computes it (spec DPBN §5.3).

Shape legend: B batch, H heads, N tokens, d head width, R hash rounds, nb buckets, F bucket factors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnzoo.ops.common.precision import working_dtype

__all__ = ["auto_num_buckets", "hash_buckets", "lsh_plan", "normalise_keys", "plan_lengths", "rotation_shape"]


def auto_num_buckets(n: int, chunk: int, max_positions: int | None = None) -> tuple[int, ...]:
    """HF's ``_set_num_buckets``: ``2 ** floor(log2(2 N / chunk))`` buckets (at least 2), factorised
    into two powers of two when above ``2 * max(int(sqrt(max_positions / chunk)), chunk)``."""
    power = max(1, (2 * (n // chunk)).bit_length() - 1)
    limit = 2 * max(int(((max_positions or n) // chunk) ** 0.5), chunk)
    if 2**power > limit:
        return (2 ** (power // 2), 2 ** (power - power // 2))
    return (2**power,)


def plan_lengths(batch: int, n: int, mask: Tensor | None, pad_slots: bool) -> list[int]:
    """The length each of the ``batch`` sequences' :func:`lsh_plan` follows (B ints).

    Its real-token count (``mask: (B, N)``), so padding a batch changes no real row; the padded
    length N for every sequence with ``pad_slots`` (HF, which sees the padded batch) or without a mask.
    """
    if mask is None or pad_slots:
        return [n] * batch
    return [int(c) for c in mask.sum(1).tolist()]


def lsh_plan(
    length: int, bucket_size: int, num_hashes: int, num_buckets: tuple[int, ...] | None
) -> tuple[bool, int, tuple[int, ...]]:
    """``(chunked, rounds, factors)`` of a sequence of ``length`` tokens: hashed in ``num_hashes`` rounds
    only above ``bucket_size`` tokens (else one chunk, one round); ``num_buckets`` or HF's rule for ``length``."""
    chunked = length > bucket_size
    return chunked, num_hashes if chunked else 1, num_buckets or auto_num_buckets(length, bucket_size)


def rotation_shape(heads: int, d: int, rounds: int, factors: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Shape of the random rotations: ``(H, d, R, sum(factors) / 2)`` (HF's ``random_rotations``)."""
    return (heads, d, rounds, sum(factors) // 2)


def hash_buckets(q: Tensor, rotations: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Bucket of every token in every round: ``q (B, H, N, d)`` -> ``(B, H, R, N)`` in ``[0, prod(factors))``.

    ``argmax([x R, -x R])`` per factor (x the un-normalised shared query/key), combined as
    ``b_0 + f_0 * b_1``.
    """
    rotated = torch.einsum("bhtd,hdrk->bhrtk", q.detach(), rotations.to(q.dtype))
    buckets, start, product = None, 0, 1
    for f in factors:
        part = rotated[..., start : start + f // 2]
        start += f // 2
        # argmax([part, -part]) without building it: the first maximum of part wins a tie with -part's
        top, top_at = part.max(-1)
        low, low_at = part.min(-1)
        found = torch.where(top >= -low, top_at, low_at + f // 2)
        buckets = found if buckets is None else buckets + product * found
        product *= f
    assert buckets is not None
    return buckets


def normalise_keys(q: Tensor) -> Tensor:
    """Shared-QK keys: ``q / sqrt(mean(q^2) + 1e-6) / sqrt(d)`` (HF ``_len_and_dim_norm``), same shape as q."""
    return _SharedKeys.apply(q)


def _key_factor(q: Tensor) -> Tensor:
    """``f = (mean(q^2) + 1e-6)^(-1/2) d^(-1/2)``: ``(..., N, 1)`` in fp32 at least (f^3, in the backward,
    reaches 1.6e7 for a zero row: past fp16's range), no full-size temporary."""
    d = q.shape[-1]
    mean_square = torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=working_dtype(q)).square_().div_(d)
    return mean_square.add_(1e-6).rsqrt_().div_(math.sqrt(d))


class _SharedKeys(torch.autograd.Function):
    """``q f(q)`` with the gradient ``f g - f^3 (g . q) q`` (``df/dq = -f^3 q``) in two passes over the result
    (autograd's composition makes five full-size tensors)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor) -> Tensor:  # type: ignore[override]
        factor = _key_factor(q)
        ctx.save_for_backward(q, factor)
        return q * factor.to(q.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        q, factor = ctx.saved_tensors
        q_work, grad_work = q.to(factor.dtype), grad.to(factor.dtype)  # copies only for half precision
        dot = grad_work.unsqueeze(-2) @ q_work.unsqueeze(-1)  # (..., N, 1, 1): g . q per token, a batched product
        coef = factor.pow(3).mul_(dot.squeeze(-1)).neg_()
        return torch.mul(grad_work, factor).addcmul_(q_work, coef).to(q.dtype)
