"""Sequence-parallel LongNet (Ding et al. 2023, §3.3 "distributed training") over ``torch.distributed``.

Each rank of a process group holds a contiguous chunk of the sequence (``torch.tensor_split`` sizes)
of q, k, v ``(B, H, n_p, d)``. Per rank:

1. Segments inside the chunk run through the sparse engine on the local tokens.
2. For segments crossing chunk boundaries, the *sparsified* k/v rows (every r-th row of the segment
   from the head's offset; causal: from earlier ranks only) are exchanged with one
   ``all_to_all_single`` per call (point-to-point volumes: a rank sends each row only to the ranks
   whose segment needs it, never the whole chunk). The backward is the reverse exchange, so key and
   value gradients return to the rank that owns the row.
3. Each rank computes its own kept query rows of those segments against the gathered rows (the
   engine's dense kernels with an additive mask, query rows in chunks, recomputed in backward).
4. Everything is mixed per row by log-sum-exp exactly as the single-device mechanism (optionally
   with detached weights, torchscale's choice), in place in the engine's output buffer on the rows
   the crossing segments cover (:mod:`attnzoo.ops.dilated.parallel_merge`), so a rank holds one
   output-sized tensor, as one device does. The crossing segments run before the engine: the
   engine's backward, the memory peak, runs first.

The result on every rank equals its rows of :func:`attnzoo.ops.dilated.dilated_attention` on the
full sequence (the plan is in :mod:`attnzoo.ops.dilated.parallel_plan`). torchscale's
``seq_parallel`` path (the reference design) all-gathers every rank's sparsified rows and requires
``w % (N/P) == 0``; its causal branch drops the own rank's rows: we keep the math instead.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, key_mask_bias
from attnzoo.ops.dilated.offsets import check_branches, head_offsets
from attnzoo.ops.dilated.parallel_comm import (
    AllToAll,
    current_group,
    global_length,
    sequence_parallel_group,
    set_sequence_parallel_group,
)
from attnzoo.ops.dilated.parallel_merge import Mixture, ParallelMixture, Part
from attnzoo.ops.dilated.parallel_plan import Group, RankPlan, chunk_bounds, rank_plan
from attnzoo.sparse import sparse_attention
from attnzoo.sparse.kernels import pick_kernel

__all__ = [
    "current_group",
    "dilated_attention_parallel",
    "global_length",
    "sequence_parallel_group",
    "set_sequence_parallel_group",
]

_CHUNK_BYTES = 8 * 2**20
"""Bias bytes per kernel call of a crossing segment (well below glibc's 32 MiB mmap threshold)."""


class _CrossingAttention(torch.autograd.Function):
    """Queries ``(B, H, M, d)`` against gathered keys ``(B, H, S, d)`` of one crossing segment.

    ``key_ok: (B|1, H, S)``; with ``causal`` key position <= query position. Returns ``(out, lse)``,
    ``lse = -inf`` on rows without keys. Query rows run in chunks (bias under ``_CHUNK_BYTES``) and
    are recomputed in backward, which takes the gradient of ``lse`` too (exact mixture gradients).
    """

    @staticmethod
    def forward(ctx: Any, q, k, v, key_ok, qpos, kpos, causal, scale, kernel):  # type: ignore[override]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        outs, lses = [], []
        for sl in _row_chunks(q.shape[2], k.shape[1] * k.shape[2] * (1 if key_ok is None else key_ok.shape[0])):
            bias, has_key = _bias(key_ok, qpos[:, sl], kpos, causal, q.dtype)
            out, lse = kernel.forward(q[:, :, sl], k, v, bias, False, scale)
            outs.append(out)
            lses.append(lse if has_key is None else lse.masked_fill(~has_key, float("-inf")))
        out, lse = torch.cat(outs, 2), torch.cat(lses, 2)
        ctx.save_for_backward(q, k, v, key_ok, qpos, kpos, out, lse)
        ctx.causal, ctx.scale, ctx.kernel = causal, scale, kernel
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Tensor, dlse: Tensor):  # type: ignore[override]
        q, k, v, key_ok, qpos, kpos, out, lse = ctx.saved_tensors
        empty = torch.isinf(lse)
        safe, dlse = lse.masked_fill(empty, 0.0), dlse.masked_fill(empty, 0.0)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for sl in _row_chunks(q.shape[2], k.shape[1] * k.shape[2] * (1 if key_ok is None else key_ok.shape[0])):
            bias, _ = _bias(key_ok, qpos[:, sl], kpos, ctx.causal, q.dtype)
            dqc, dkc, dvc = ctx.kernel.backward(
                dout[:, :, sl].contiguous(), dlse[:, :, sl], q[:, :, sl], k, v, out[:, :, sl], safe[:, :, sl],
                bias, False, ctx.scale,
            )  # fmt: skip
            dq[:, :, sl] = dqc
            dk += dkc
            dv += dvc
        return dq, dk, dv, None, None, None, None, None, None


def _row_chunks(rows: int, bias_per_row: int) -> list[slice]:
    step = max(1, _CHUNK_BYTES // max(4 * bias_per_row, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _bias(
    key_ok: Tensor | None, qpos: Tensor, kpos: Tensor, causal: bool, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """Additive mask ``(B|1, H, m, S)`` and the rows that see a key ``(B|1, H, m)``; ``None, None``
    when every key is visible to every query (``key_ok`` None: all keys real)."""
    if key_ok is None and not causal:
        return None, None
    allowed = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=qpos.device) if key_ok is None else key_ok[:, :, None]
    if causal:
        allowed = allowed & (kpos[:, None, :] <= qpos[:, :, None])[None]
    allowed = allowed.expand(allowed.shape[0], qpos.shape[0], qpos.shape[1], kpos.shape[1])
    return key_mask_bias(allowed, dtype), allowed.any(-1)


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index: (H, M)`` of ``x: (B, H, n, D)`` per head: ``(B, H, M, D)`` (differentiable)."""
    return x.gather(2, index[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[3]))


def dilated_attention_parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    segment_lengths: tuple[int, ...] = (2048, 4096, 8192),
    dilation_rates: tuple[int, ...] = (1, 2, 4),
    offset_rule: str = "torchscale",
    detach_mixing: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    executor: str = "auto",
    group: Any = None,
    seq_len: int | None = None,
) -> Tensor:
    """Sequence-parallel :func:`attnzoo.ops.dilated.dilated_attention`: this rank's rows of the full result.

    Args:
        q, k, v: this rank's chunk ``(B, H, n_p, d)``: tokens ``[start_p, stop_p)`` of the sequence
            split by ``torch.tensor_split(x, P, dim=2)``.
        mask: this rank's part ``(B, n_p)`` of the padding mask, True = real token.
        causal, segment_lengths, dilation_rates, offset_rule, detach_mixing, scale, executor: as the
            single-device function (``w_i`` is clipped to the *global* N).
        dropout_p: must be 0 (no attention dropout in sequence-parallel mode).
        group: the sequence-parallel process group (default: the whole world).
        seq_len: the global N; when None it is gathered from the ranks' chunk lengths.

    Returns:
        ``(B, H, n_p, d)``, equal to rows ``[start_p, stop_p)`` of the single-device result.

    Raises:
        ValueError: dropout, no process group, chunk lengths that do not split ``seq_len``.
    """
    check_qkv(q, k, v, cross=False)
    check_branches(segment_lengths, dilation_rates)
    if dropout_p != 0.0:
        raise ValueError(f"sequence-parallel dilated attention has no attention dropout; got dropout_p={dropout_p}")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sequence-parallel dilated attention needs an initialised torch.distributed process group")
    b, heads, n_local, d = q.shape
    mask = check_padding_mask(mask, b, n_local, q.device)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = global_length(n_local, group, q.device) if seq_len is None else seq_len
    start, stop = chunk_bounds(n, world)[rank]
    if stop - start != n_local:
        raise ValueError(f"rank {rank} of {world} must hold {stop - start} of N={n} tokens, got {n_local}")
    branches = tuple(
        (min(w, n), r, head_offsets(heads, r, offset_rule))
        for w, r in zip(segment_lengths, dilation_rates, strict=True)
    )
    plan = rank_plan(n, world, rank, branches, causal)
    scale = d**-0.5 if scale is None else float(scale)
    exchange = any(rank_plan(n, world, p, branches, causal).rows_sent for p in range(world))  # same on every rank
    engine = functools.partial(
        sparse_attention, pattern=list(plan.inner), mask=mask, causal=causal, scale=scale, executor=executor,
        detach_weights=detach_mixing,
    )  # fmt: skip

    def pieces(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, list[Part]]:
        received = None
        if exchange:
            received, v = _exchange(q, k, v, mask, plan, group)  # v anchored: every rank's output depends on it
        # crossing segments first: autograd runs later nodes first, so the engine's backward (the peak)
        # runs before theirs and never holds their full-size q/k/v gradients
        parts = [
            _group_attention(g, sources, q, k, v, mask, received, plan.start, causal, scale)
            for g, sources in zip(plan.groups, plan.sources, strict=True)
        ]
        if plan.inner:
            out, lse = engine(q, k, v)
            assert lse is not None
        else:  # rows no branch covers
            out, lse = v * 0, q.new_full(q.shape[:3], float("-inf"))
        return out, lse, parts

    if not exchange and not plan.groups:
        return pieces(q, k, v)[0]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return ParallelMixture.apply(q, k, v, pieces, detach_mixing)
    out, lse, parts = pieces(q, k, v)
    if parts:
        mixture = Mixture.build(out, lse, parts)
        mixture.write(out, mixture.mixed)
    return out


def _exchange(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, plan: RankPlan, group: Any
) -> tuple[Tensor, Tensor]:
    """Send the sparsified rows other ranks need: received ``(B, H, R, 2d[+1])`` (k, v, mask) and ``v`` anchored
    (its backward, the reverse exchange, then runs on every rank, whether or not it uses the received rows)."""
    b, h, n_local, _ = q.shape
    index = plan.send_index.to(q.device)
    parts = [_rows(k, index), _rows(v, index)]
    if mask is not None:
        parts.append(_rows(mask[:, None, :, None].expand(b, h, n_local, 1).to(k.dtype), index))
    sent = torch.cat(parts, -1).permute(2, 0, 1, 3)
    received, v = AllToAll.apply(sent, v, plan.send_splits, plan.recv_splits, group)
    return received.permute(1, 2, 0, 3), v


def _group_attention(
    g: Group,
    sources: tuple[int, ...],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    received: Tensor | None,
    start: int,
    causal: bool,
    scale: float,
) -> Part:
    """One crossing segment: flat ``(head, row)`` indices ``(M',)`` of this rank's kept rows, their
    output ``(B, M', dv)`` and log-sum-exp ``(B, M')``."""
    b, h, n_local, d = q.shape
    keys, ok, kpos = _group_keys(g, sources, k, v, mask, received, start)
    qpos = g.rows.to(q.device)
    local = (qpos - start).clamp_min(0)
    kernel = pick_kernel(q.device, q.dtype, equal_widths=v.shape[-1] == d)
    o, l = _CrossingAttention.apply(
        _rows(q, local), keys[..., :d], keys[..., d:], ok, qpos, kpos, causal, scale, kernel
    )
    valid = (qpos >= 0).reshape(-1)
    flat = (torch.arange(h, device=q.device)[:, None] * n_local + local).reshape(-1)[valid]
    return flat, o.reshape(b, -1, o.shape[-1])[:, valid], l.reshape(b, -1)[:, valid]


def _group_keys(
    g: Group, sources: tuple[int, ...], k: Tensor, v: Tensor, mask: Tensor | None, received: Tensor | None, start: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Keys and values ``(B, H, S, 2d)``, key validity ``(B|1, H, S)`` (None: all real) and positions ``(H, S)``."""
    b, h, n_local, d = k.shape
    kv, ok = [], []
    for (_, pos), first in zip(g.keys, sources, strict=True):
        pos = pos.to(k.device)
        valid = (pos >= 0)[None]
        if first < 0:
            local = (pos - start).clamp_min(0)
            kv.append(torch.cat([_rows(k, local), _rows(v, local)], -1))
            if mask is not None:
                valid = valid & mask[:, None, :].expand(b, h, n_local).gather(2, local[None].expand(b, -1, -1))
        else:
            assert received is not None
            rows = received[:, :, first : first + pos.shape[1]]
            kv.append(rows[..., : 2 * d])
            if mask is not None:
                valid = valid & (rows[..., 2 * d] > 0.5)
        ok.append(valid)
    positions = torch.cat([p for _, p in g.keys], 1)
    if mask is None and bool((positions >= 0).all()):  # decided on the CPU plan: no device sync
        return torch.cat(kv, 2), None, positions.to(k.device)
    width = max(x.shape[0] for x in ok)
    return torch.cat(kv, 2), torch.cat([x.expand(width, -1, -1) for x in ok], 2), positions.to(k.device)
