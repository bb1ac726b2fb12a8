"""PSF-Attn synthetic tasks: the adding problem and the temporal-order problem (spec 5.1, 5.2).

``RuslanKhalitov/SparseFactorization:SyntheticExperiments/synth_data_generation.py``. Lengths
2^7 .. 2^14; sizes train 200,000 / val 5,000 / test 5,000 per length.
Adding: values ``x = 1 - 2 U[0, 1)``, a marker channel with 1 at two distinct uniform positions
p1 < p2; input (N, 2) = [value, marker]; target ``0.5 + (x[p1] + x[p2]) / 4``; MSE.
Temporal order: symbols a..d (0..3) uniform, two distinct positions get X (4) or Y (5); classes
XX 0, XY 1, YX 2, YY 3. Ids here are PSF symbol + 1 so that 0 stays the padding id (vocab 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["PsfOptions", "adding", "temporal_order"]


@dataclass(frozen=True)
class PsfOptions:
    """Sequence length N, a power of two in 2^7 .. 2^14 (PSF-Attn's lengths)."""

    seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.seq_len not in [2**k for k in range(7, 15)]:
            raise ValueError(f"seq_len must be a power of two in 2^7..2^14 (PSF-Attn lengths), got {self.seq_len}")


def _two_positions(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct sorted positions per row, uniform over pairs (as ``random.sample(range(n), 2)``)."""
    p1 = rng.integers(0, length, size=n)
    p2 = rng.integers(0, length - 1, size=n)
    p2 = p2 + (p2 >= p1)
    return np.minimum(p1, p2), np.maximum(p1, p2)


def adding(opts: PsfOptions, size: int, rng: np.random.Generator) -> SplitArrays:
    """Adding problem: inputs (size, N, 2) float32, labels (size,) float32 in [0, 1]."""
    n = opts.seq_len
    x = (1.0 - 2.0 * rng.random((size, n))).astype(np.float32)
    p1, p2 = _two_positions(rng, size, n)
    rows = np.arange(size)
    marker = np.zeros((size, n), dtype=np.float32)
    marker[rows, p1] = 1.0
    marker[rows, p2] = 1.0
    target = (0.5 + (x[rows, p1].astype(np.float64) + x[rows, p2]) / 4.0).astype(np.float32)
    return SplitArrays(np.stack([x, marker], axis=-1), np.full(size, n, dtype=np.int32), target)


def temporal_order(opts: PsfOptions, size: int, rng: np.random.Generator) -> SplitArrays:
    """Temporal order: ids (size, N) int8 in 1..6 (symbol + 1), labels (size,) int64 in 0..3."""
    n = opts.seq_len
    seq = rng.integers(0, 4, size=(size, n), dtype=np.int8)
    p1, p2 = _two_positions(rng, size, n)
    s1, s2 = rng.integers(4, 6, size=size), rng.integers(4, 6, size=size)
    rows = np.arange(size)
    seq[rows, p1] = s1
    seq[rows, p2] = s2
    label = 2 * (s1 - 4) + (s2 - 4)
    return SplitArrays(seq + 1, np.full(size, n, dtype=np.int32), label.astype(np.int64))
