"""Structured sparse patterns of issue 10, described once and run by the engine's public API.

* :func:`butterfly_groups`: Dimension Mixer's butterfly stage, groups of ``b`` tokens ``s`` apart
  (a per-stage token order with a block-diagonal layout, like :func:`dilated_segments`).
* :func:`lsh_chunks`: Reformer's chunked attention over a data-dependent (per batch item and head)
  token order: each chunk visits itself and the previous chunk (cyclically).

Shape legend: N tokens, L slots, b group size, s stride, R hash rounds, G = B * H folded heads.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from attnzoo.sparse.layout import BlockLayout, SparsePattern

__all__ = ["butterfly_geometry", "butterfly_groups", "lsh_chunks"]


def _ceil_log(n: int, base: int) -> int:
    """Smallest t >= 1 with ``base ** t >= n`` (integer arithmetic)."""
    t, power = 1, base
    while power < n:
        t, power = t + 1, power * base
    return t


def butterfly_geometry(
    seq_len: int, block_size: int, stage: int, *, float_stage_count: bool = False
) -> tuple[int, int]:
    """``(stride s, padded length L)`` of butterfly stage ``stage`` (the layer index) for N tokens.

    Solving-LRA-PathX's rule (spec DPBN §4.2) on the length padded to a multiple of b, P:
    ``n_stage = ceil(log_b P)``, ``t = stage mod n_stage``, ``s = b ** t`` capped to ``ceil(P / b)``
    when ``s * b > P``; L pads P further to a multiple of ``b * s``. ``float_stage_count`` computes
    ``n_stage`` with the official float logarithm (off by one at some exact powers, quirk B1).
    """
    b = block_size
    padded = max(1, math.ceil(seq_len / b)) * b
    n_stage = max(1, math.ceil(float(np.log(padded) / np.log(b)))) if float_stage_count else _ceil_log(padded, b)
    stride = b ** (stage % n_stage)
    if stride * b > padded:
        stride = math.ceil(padded / b)
    span = b * stride
    return stride, math.ceil(padded / span) * span


@functools.lru_cache(maxsize=64)
def butterfly_groups(
    seq_len: int, block_size: int, stage: int, float_stage_count: bool = False, geometry_len: int | None = None
) -> SparsePattern:
    """Butterfly stage: token i attends token j iff ``i // (b s) == j // (b s)`` and ``i = j (mod s)``.

    Group (g, r) holds tokens ``g*b*s + r + j*s`` (j = 0 .. b-1), in that order, as one engine block
    of b slots (slots past N are empty). See :func:`butterfly_geometry` for s, taken for
    ``geometry_len`` tokens when given (the official fixed ``max_seq_len``, >= N), else for N.
    """
    b = block_size
    geometry = seq_len if geometry_len is None else geometry_len
    stride, length = butterfly_geometry(geometry, b, stage, float_stage_count=float_stage_count)
    slot = torch.arange(length)
    group, j = slot // b, slot % b
    pos = (group // stride) * (b * stride) + group % stride + j * stride
    pos = torch.where(pos < seq_len, pos, -1)
    blocks = torch.arange(length // b)[None, :, None]
    layout = BlockLayout(b, blocks, torch.ones_like(blocks, dtype=torch.bool))
    groups = (b, stride) if length == seq_len else None  # no empty slots: the groups are a view
    return SparsePattern(f"butterfly_groups(b={b}, s={stride})", layout, None, pos[None], seq_len, groups=groups)


def lsh_chunks(order: Tensor, lengths: Tensor, chunk: int, period: int, rounds: int, *, causal: bool) -> SparsePattern:
    """Chunked attention over per-head token orders (Reformer's sorted hash buckets).

    Slot t of folded head g holds virtual token ``order[g, t]`` (-1 = empty); virtual token
    ``r * period + i`` is token i in hash round r. Chunk c (slots ``[c*chunk, (c+1)*chunk)``)
    visits itself and chunk ``c - 1``; chunk 0 wraps round to the last chunk holding any of the
    first ``lengths[g]`` slots. A query never attends its own token (in any round), and with
    ``causal`` only tokens ``<=`` its own. The pattern has ``copies = rounds``: the engine takes the N
    tokens and merges each token's rounds by log-sum-exp.

    Args:
        order: ``(G, L)`` long, L a multiple of ``chunk``; values in ``[-1, R * period)``.
        lengths: ``(G,)`` long, the slots that count for the wrap-round (>= 1).
        chunk: chunk length (the engine block size).
        period: N, the number of tokens per round.
        rounds: R, the number of hash rounds.
        causal: keys ``j <= i`` only (on token positions).
    """
    g, length = order.shape
    nb = length // chunk
    last = ((lengths.clamp_min(1) - 1) // chunk).cpu()[:, None]  # (G, 1)
    own = torch.arange(nb)[None, :].expand(g, nb)
    prev = torch.where(own == 0, last, own - 1)
    idx = torch.stack([own, prev], -1)  # (G, nB, 2)
    valid = torch.stack([torch.ones_like(own, dtype=torch.bool), (prev != own) & (own <= last)], -1)
    layout = BlockLayout(chunk, idx, valid)

    def mask_mod(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        qi, ki = q % period, kv % period
        ok = qi != ki
        return ok & (ki <= qi) if causal else ok

    # every chunk holds its own queries' tokens, which they must not attend: no block is full
    return SparsePattern(
        f"lsh_chunks(chunk={chunk})", layout, mask_mod, order, rounds * period, masked_gather=True, copies=rounds
    )
