"""Band fast path: sliding-window query blocks run on shifted views of the keys, without gathers or per-block masks.

A pattern that declares ``band = (before, after)`` (slot i = token i, query i attends keys
``i - before .. i + after``; :func:`attnzoo.sparse.patterns.sliding_window` does) has the same
structure at every query block t: it visits key blocks ``t + lo .. t + hi`` with
``lo = -ceil(before / bs)`` and ``hi = floor((bs - 1 + after) / bs)``, and the element mask inside
that window is one ``(bs, span)`` matrix, ``span = (hi - lo + 1) * bs``, whatever t is. Query
blocks whose whole window holds real keys (inside the sequence, no padding) are "clean": their keys
are one overlapping strided view of ``k`` (query block t starts ``bs`` rows after block t - 1) and
their mask one constant ``(1, 1, bs, span)`` bias that the fused CPU flash kernel broadcasts. The
longest run of clean blocks goes through one kernel call forward and a few large ones backward;
the remaining blocks (sequence ends, padding) take the general gather path of
:mod:`attnzoo.sparse.executors`. The result is identical; only the work differs.

Shapes: ``BH = B * H``, ``nB`` blocks of ``bs`` slots, ``m`` clean blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.ops.common import key_mask_bias
from attnzoo.sparse.kernels import Kernel
from attnzoo.sparse.plan import ChunkPlan

__all__ = ["BACKWARD_CHUNK_BYTES", "Band", "band_backward", "band_forward", "find_band"]

BACKWARD_CHUNK_BYTES = 4 * 2**20
"""Query blocks per backward kernel call: as many as keep one window gradient (``(BH, nc, span, d)``) under
this size. Local at N = 16384 (window 256, block 128), fwd+bwd: 4 MiB 1687-1900 ms against 1749-1820 ms at
the plan's 12 MiB chunks (alternating runs), 24-48 MiB about 2000 ms; at N = 4096 430-438 vs 465-471 ms."""


@dataclass(frozen=True)
class Band:
    """The clean query blocks ``[start, stop)`` of a plan and the constant window geometry.

    Attributes:
        start, stop: the run of clean query blocks.
        lo: first visited key block relative to the query block (<= 0).
        span: keys per window, ``(hi - lo + 1) * bs``.
        allowed: ``(bs, span)`` bool element mask of every clean window (band and causal).
        rest: the other query-block ranges, cut into the plan's chunks (general path).
    """

    start: int
    stop: int
    lo: int
    span: int
    allowed: Tensor
    rest: list[tuple[int, int]]

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """``(1, 1, bs, span)`` additive mask, or ``None`` when the window is entirely allowed."""
        if bool(self.allowed.all()):
            return None
        return key_mask_bias(self.allowed, dtype)[None, None]


def find_band(plan: ChunkPlan, kernel: Kernel, dropout: object) -> Band | None:
    """The band of ``plan`` when the fast path applies, else ``None``.

    It applies to patterns with a ``band`` on token-ordered slots, without ``score_mod``, run by the
    ``cpu_flash`` kernel without dropout, when at least one query block is clean. Computed once per
    plan (forward and backward share it); reads ``key_ok`` on the CPU, where this kernel runs.
    """
    pattern = plan.pattern
    if pattern.band is None or pattern.positions is not None or plan.score_mod is not None:
        return None
    if kernel.name != "cpu_flash" or dropout is not None:
        return None
    if "band" not in plan.__dict__:
        plan.__dict__["band"] = _build(plan)
    return plan.__dict__["band"]


def _build(plan: ChunkPlan) -> Band | None:
    assert plan.pattern.band is not None
    before, after = plan.pattern.band
    if plan.causal:
        after = 0  # keys after the query are masked anyway; drop the blocks that hold only those
    bs, nb = plan.bs, plan.nb
    lo, hi = -math.ceil(before / bs), (bs - 1 + after) // bs
    width = hi - lo + 1
    if width > nb:
        return None
    key_ok = plan.key_ok
    block_real = key_ok.reshape(key_ok.shape[0], key_ok.shape[1], nb, bs).all(-1).all(1).all(0).cpu()
    # clean[t]: key blocks t + lo .. t + hi exist and hold only real keys (a window sum of bad blocks)
    bad = torch.cat([torch.zeros(1, dtype=torch.long), (~block_real).long().cumsum(0)])
    first = torch.arange(-lo, nb - hi)  # query blocks whose window lies inside the sequence
    clean = torch.zeros(nb, dtype=torch.bool)
    clean[first] = (bad[first + hi + 1] - bad[first + lo]) == 0
    start, stop = _longest_run(clean)
    if stop == start:
        return None
    i = torch.arange(bs)[:, None]
    j = torch.arange(width * bs)[None, :] + lo * bs
    allowed = (j >= i - before) & (j <= i + after)
    step = plan.blocks_per_chunk
    rest = [(s, min(s + step, stop_)) for start_, stop_ in ((0, start), (stop, nb)) for s in range(start_, stop_, step)]
    return Band(start, stop, lo, width * bs, allowed.to(key_ok.device), rest)


def _longest_run(flags: Tensor) -> tuple[int, int]:
    """``[start, stop)`` of the longest run of True in a 1D bool tensor (``(0, 0)`` if none)."""
    edges = torch.diff(torch.cat([torch.zeros(1), flags.float(), torch.zeros(1)]))
    starts, stops = (edges > 0).nonzero().flatten(), (edges < 0).nonzero().flatten()
    if starts.numel() == 0:
        return 0, 0
    best = int(torch.argmax(stops - starts))
    return int(starts[best]), int(stops[best])


def _blocks(x: Tensor, bs: int) -> Tensor:
    """``(B, H, L[, d])`` contiguous -> ``(BH, nB, bs[, d])`` view."""
    return x.view(x.shape[0] * x.shape[1], x.shape[2] // bs, bs, *x.shape[3:])


def _windows(x: Tensor, band: Band, bs: int, start: int, stop: int) -> Tensor:
    """Key windows of query blocks ``[start, stop)``: an overlapping view ``(BH, stop - start, span, d)`` of ``x``."""
    x = x.contiguous()
    bh, length, d = x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
    offset = x.storage_offset() + (start + band.lo) * bs * d
    return x.as_strided((bh, stop - start, band.span, d), (length * d, bs * d, d, 1), offset)


def band_forward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, plan: ChunkPlan, band: Band, kernel: Kernel, scale: float
) -> None:
    """Fill the clean query blocks of ``out: (B, H, L, dv)`` and ``lse: (B, H, L)`` (one kernel call).

    ``q, k, v``: contiguous slot tensors ``(B, H, L, d)``. Every clean row sees at least its own key.
    """
    bs = plan.bs
    qb = _blocks(q, bs)[:, band.start : band.stop]
    kw, vw = (_windows(x, band, bs, band.start, band.stop) for x in (k, v))
    oc, lc = kernel.forward(qb, kw, vw, band.bias(q.dtype), False, scale, None)
    _blocks(out, bs)[:, band.start : band.stop] = oc
    _blocks(lse, bs)[:, band.start : band.stop] = lc


def band_backward(
    grads: tuple[Tensor, Tensor | None],
    saved: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    plan: ChunkPlan,
    band: Band,
    kernel: Kernel,
    scale: float,
    into: tuple[Tensor, Tensor, Tensor],
) -> None:
    """Gradients of the clean query blocks, accumulated into ``into = (dq, dk, dv)``.

    ``grads = (dout, dlse)`` and ``saved = (q, k, v, out, lse)``: contiguous slot tensors, ``lse`` finite.
    Query blocks run in chunks whose window gradients (``(BH, nc, span, d)`` each) stay under
    ``BACKWARD_CHUNK_BYTES``; each window's gradient is added back block by block (windows overlap).
    """
    dout, dlse = grads
    q, k, v, out, lse = saved
    dq, dk, dv = into
    bs, bh = plan.bs, q.shape[0] * q.shape[1]
    bias = band.bias(q.dtype)
    per_block = bh * band.span * max(q.shape[-1], v.shape[-1]) * q.element_size()
    step = max(1, BACKWARD_CHUNK_BYTES // per_block)
    width = band.span // bs
    for start in range(band.start, band.stop, step):
        stop = min(start + step, band.stop)
        rows = slice(start, stop)
        dlc = None if dlse is None else _blocks(dlse, bs)[:, rows]
        dqc, dkc, dvc = kernel.backward(
            _blocks(dout, bs)[:, rows],
            dlc,
            _blocks(q, bs)[:, rows],
            _windows(k, band, bs, start, stop),
            _windows(v, band, bs, start, stop),
            _blocks(out, bs)[:, rows],
            _blocks(lse, bs)[:, rows],
            bias,
            False,
            scale,
            None,
        )
        _blocks(dq, bs)[:, rows] = dqc
        for grad, window in ((dk, dkc), (dv, dvc)):
            parts = window.view(bh, stop - start, width, bs, window.shape[-1])
            target = _blocks(grad, bs)
            for j in range(width):
                target[:, start + band.lo + j : stop + band.lo + j] += parts[:, :, j]
