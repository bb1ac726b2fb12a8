"""Who needs which key rows: the exchange plan of sequence-parallel LongNet, and its communication model.

The sequence of N tokens is split over P ranks into contiguous chunks (``torch.tensor_split`` sizes:
the first ``N mod P`` ranks hold one token more). For branch (w, r) a segment lying inside one chunk
is computed there alone (through the sparse engine). A segment crossing chunk boundaries becomes a
:class:`Group` on every rank it touches: that rank's kept rows (every r-th token of the segment,
from the head's offset) attend to all kept rows of the segment, so each rank receives, from every
other rank of the segment, only its *sparsified* rows (per head: ``ceil(len / r)`` rows of k and v).
Under ``causal`` only earlier ranks send (later keys are in every local query's future).

Every rank derives the whole plan from ``(N, P, branches, causal)``: no metadata is exchanged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.sparse import SparsePattern, dilated_segments

__all__ = ["Branch", "Group", "RankPlan", "chunk_bounds", "communication_model", "rank_plan"]

Branch = tuple[int, int, tuple[int, ...]]
"""``(w, r, offsets)``: segment length (already clipped to N), dilation, per-head offset."""


def chunk_bounds(n: int, world: int) -> tuple[tuple[int, int], ...]:
    """``[start, stop)`` of every rank's chunk (``torch.tensor_split`` sizes).

    Raises:
        ValueError: fewer tokens than ranks (a rank would hold nothing).
    """
    if n < world:
        raise ValueError(
            f"sequence parallelism needs at least one token per process: a sequence of N={n} tokens "
            f"cannot be split over {world} processes (the sequence-parallel group's size)"
        )
    base, extra = divmod(n, world)
    starts = [p * base + min(p, extra) for p in range(world + 1)]
    return tuple((starts[p], starts[p + 1]) for p in range(world))


def _kept(lo: int, hi: int, start: int, r: int, offsets: Tensor) -> Tensor:
    """``(H, M)`` positions x in ``[lo, hi)`` with ``(x - start) % r == offset_h``, ascending; -1 pads."""
    if lo >= hi:
        return torch.empty(offsets.shape[0], 0, dtype=torch.long)
    first = lo + (offsets - (lo - start)) % r
    count = (hi - first + r - 1).div(r, rounding_mode="floor")
    u = torch.arange(int(count.max()))
    return torch.where(u < count[:, None], first[:, None] + u * r, -1)


@dataclass(frozen=True)
class Group:
    """A segment of one branch crossing the owner rank's chunk boundary.

    Attributes:
        branch: index into the branch list.
        rows: ``(H, M)`` global positions of the owner's kept query rows (-1 = padding).
        keys: ``(rank, (H, S_q) global positions)`` of the segment's kept key rows, in rank order
            (the owner included); -1 = padding.
    """

    branch: int
    rows: Tensor
    keys: tuple[tuple[int, Tensor], ...]


def _groups(
    n: int, bounds: tuple[tuple[int, int], ...], p: int, branches: tuple[Branch, ...], causal: bool
) -> list[Group]:
    """All groups of rank ``p`` (branch order, then segment order)."""
    s, e = bounds[p]
    found = []
    for i, (w, r, offsets) in enumerate(branches):
        offs = torch.tensor(offsets)
        for t in sorted({s // w, (e - 1) // w}):
            a, b = t * w, min((t + 1) * w, n)
            if a >= s and b <= e:
                continue  # inside the chunk: the engine computes it
            rows = _kept(max(a, s), min(b, e), a, r, offs)
            if rows.shape[1] == 0:
                continue
            end = min(b, e) if causal else b
            keys = [(q, _kept(max(a, sq), min(end, eq), a, r, offs)) for q, (sq, eq) in enumerate(bounds)]
            found.append(Group(i, rows, tuple((q, pos) for q, pos in keys if pos.shape[1] > 0)))
    return found


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of the exchange and of the computation.

    Attributes:
        start, stop: this rank's chunk ``[start, stop)``.
        inner: engine patterns (on local token indices) for the segments inside the chunk.
        groups: this rank's crossing segments.
        send_index: ``(H, R_send)`` local row of every row sent (destinations in rank order); padding rows read row 0.
        send_splits, recv_splits: rows sent to / received from each rank.
        sources: per group, per key block in rank order: ``-1`` (local) or the first received row.
    """

    start: int
    stop: int
    inner: tuple[SparsePattern, ...]
    groups: tuple[Group, ...]
    send_index: Tensor
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]
    sources: tuple[tuple[int, ...], ...]

    @property
    def rows_sent(self) -> int:
        """Rows (per batch item and head) this rank sends."""
        return sum(self.send_splits)


@functools.lru_cache(maxsize=32)
def _all_groups(n: int, world: int, branches: tuple[Branch, ...], causal: bool) -> tuple[tuple[Group, ...], ...]:
    bounds = chunk_bounds(n, world)
    return tuple(tuple(_groups(n, bounds, p, branches, causal)) for p in range(world))


def _inner_pattern(n_local: int, shift: int, length: int, w: int, r: int, offsets: tuple[int, ...]) -> SparsePattern:
    """The branch's segments inside ``[shift, shift + length)`` of the local chunk (segment-aligned)."""
    base = dilated_segments(length, w, r, offsets)
    assert base.positions is not None
    pos = torch.where(base.positions >= 0, base.positions + shift, -1)
    return SparsePattern(f"{base.name} at +{shift}", base.layout, None, pos, n_local)


@functools.lru_cache(maxsize=32)
def rank_plan(n: int, world: int, rank: int, branches: tuple[Branch, ...], causal: bool) -> RankPlan:
    """The plan of ``rank`` (cached; every rank computes the same global plan)."""
    bounds = chunk_bounds(n, world)
    s, e = bounds[rank]
    everyone = _all_groups(n, world, branches, causal)
    inner = []
    for w, r, offsets in branches:
        lo, hi = math.ceil(s / w) * w, (e if e == n else e // w * w)
        if lo < hi:
            inner.append(_inner_pattern(e - s, lo - s, hi - lo, w, r, offsets))
    heads = len(branches[0][2])
    send = [torch.empty(heads, 0, dtype=torch.long)]
    send_splits = []
    for p in range(world):
        blocks = [pos for g in everyone[p] for q, pos in g.keys if q == rank and p != rank]
        send += [torch.where(pos >= 0, pos - s, 0) for pos in blocks]
        send_splits.append(sum(pos.shape[1] for pos in blocks))
    recv_splits, first_row = [], {}
    row = 0
    for q in range(world):
        start_q = row
        for g_index, g in enumerate(everyone[rank]):
            for q2, pos in g.keys:
                if q2 == q and q != rank:
                    first_row[(g_index, q)] = row
                    row += pos.shape[1]
        recv_splits.append(row - start_q)
    sources = tuple(
        tuple(-1 if q == rank else first_row[(g_index, q)] for q, _ in g.keys)
        for g_index, g in enumerate(everyone[rank])
    )
    return RankPlan(
        s, e, tuple(inner), everyone[rank], torch.cat(send, 1), tuple(send_splits), tuple(recv_splits), sources
    )


def communication_model(
    n: int,
    world: int,
    segment_lengths: tuple[int, ...],
    dilation_rates: tuple[int, ...],
    *,
    heads: int,
    head_dim: int,
    batch: int = 1,
    itemsize: int = 4,
    causal: bool = False,
    with_mask: bool = False,
) -> float:
    """Bytes the busiest rank sends per attention layer (forward; the backward returns the same amount).

    For branch i with ``w = min(w_i, N)`` and chunk ``c = N / P``: when ``w > c`` each rank sends its
    ``c / r_i`` kept rows per head (k and v: ``2 d`` values, one more with a padding mask) to the
    ``w / c - 1`` other ranks of its segment (causal: only to the later ones; the first rank of a
    segment is the busiest either way):

        bytes = sum_{i: w > c} (w - c) / r_i * B * H * (2 d [+ 1]) * itemsize

    Exact when ``P | N``, ``c`` and ``w`` divide one another and ``r_i | c``; otherwise per-head row
    counts differ by one and are padded to the largest, and edge segments of branches with
    ``w <= c`` that cross a chunk boundary add rows (the exact count is :class:`RankPlan`'s).
    For LongNet's geometric branches (``w_i = w_0 a^i``, ``r_i = a^i``, up to ``w = N``) each term is
    below ``w_0 B H (2d) itemsize`` and only ``log_a P`` branches have ``w > c``: constant in N.
    """
    c = n / world
    width = 2 * head_dim + (1 if with_mask else 0)
    rows = sum((min(w, n) - c) / r for w, r in zip(segment_lengths, dilation_rates, strict=True) if min(w, n) > c)
    return rows * batch * heads * width * itemsize
