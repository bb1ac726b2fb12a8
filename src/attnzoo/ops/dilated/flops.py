"""FLOP floor of LongNet dilated attention: the score entries of every branch, as dense matmul work.

Branch (w, r) cuts N into segments of ``w' = min(w, N)`` tokens; a head with offset o keeps
``c = ceil((len - o) / r)`` tokens of a segment of ``len`` tokens (0 if ``o >= len``) and attends densely
among them: ``c^2`` entries, ``c (c + 1) / 2`` when causal. Each entry costs ``4 d`` FLOPs (one
multiply-add of width d in ``Q K^T`` and one in ``P V``). Branches add (LongNet's mixture computes each).
Heads differ only by their offset; the count per head is the mean over the r offsets, exact when every
offset is used by equally many heads (H a multiple of each r, as in the default configuration).
At N = 16384 with the defaults (2048, 4096, 8192) / (1, 2, 4): ``(2048 + 1024 + 512) N`` entries.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["dilated_entries", "dilated_flops"]


def dilated_entries(
    n: int, segment_lengths: tuple[int, ...], dilation_rates: tuple[int, ...], *, causal: bool = False
) -> float:
    """Mean number of (query, key) pairs per head over all branches (see the module docstring)."""
    total = 0.0
    for segment, r in zip(segment_lengths, dilation_rates, strict=True):
        w = min(segment, n)
        full, tail = divmod(n, w)
        for length, count in ((w, full), (tail, 1 if tail else 0)):
            kept = [math.ceil((length - o) / r) if o < length else 0 for o in range(r)]
            pairs = [c * (c + 1) / 2 if causal else c * c for c in kept]
            total += count * sum(pairs) / r
    return total


def dilated_flops(n: int, d: int, options: Any, causal: bool) -> float:
    """Forward matmul FLOPs of ``dilated`` per (batch, head): ``4 * d * entries``.

    Args:
        n: sequence length N.
        d: head width.
        options: a :class:`attnzoo.mechanisms.dilated.DilatedOptions` (``segment_lengths``, ``dilation_rates``).
        causal: keys j <= i only.
    """
    return 4.0 * d * dilated_entries(n, tuple(options.segment_lengths), tuple(options.dilation_rates), causal=causal)
