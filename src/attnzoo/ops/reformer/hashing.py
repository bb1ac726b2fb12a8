"""Reformer's angular LSH as HF transformers 3.3.1 ``LSHSelfAttention`` computes it (spec DPBN §5.3).

Shape legend: B batch, H heads, N tokens, d head width, R hash rounds, nb buckets, F bucket factors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["auto_num_buckets", "hash_buckets", "normalise_keys", "rotation_shape"]


def auto_num_buckets(n: int, chunk: int, max_positions: int | None = None) -> tuple[int, ...]:
    """HF's ``_set_num_buckets``: ``2 ** floor(log2(2 N / chunk))`` buckets (at least 2), factorised
    into two powers of two when above ``2 * max(int(sqrt(max_positions / chunk)), chunk)``."""
    power = max(1, (2 * (n // chunk)).bit_length() - 1)
    limit = 2 * max(int(((max_positions or n) // chunk) ** 0.5), chunk)
    if 2**power > limit:
        return (2 ** (power // 2), 2 ** (power - power // 2))
    return (2**power,)


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
    """Shared-QK keys: ``q / sqrt(mean(q^2) + 1e-6) / sqrt(d)`` (HF ``_len_and_dim_norm``)."""
    d = q.shape[-1]
    mean_square = torch.linalg.vector_norm(q, dim=-1, keepdim=True).square() / d  # no (B, H, N, d) temporary
    return q * (torch.rsqrt(mean_square + 1e-6) / math.sqrt(d))
