"""One masked kernel call per chunk of query blocks, for patterns whose visited blocks all need the element mask.

The block-sparse plan (:mod:`.plan`) separates a chunk's fully allowed key blocks (no element mask) from the
partial ones, two kernel calls merged by log-sum-exp. Where no visited block is full (Reformer's sorted hash
chunks: a query's own chunk holds the query itself, which it must not attend), that split buys nothing and
costs a second call and a merge per chunk, and the slot maps of a general pattern (tokens in several slots)
cost gathers of every tensor in both passes. A pattern that declares ``masked_gather`` (each token in at most
one slot per head) runs here instead: q, k, v are gathered into slot order once, each chunk of query blocks
reads its visited key blocks with one ``index_select`` and gets one additive mask built from the slots'
positions (``mask_mod``, causality, empty slots, padding), and results are copied straight to token order.
The backward recomputes the keys and masks chunk by chunk (memory O(N d) plus one chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attnzoo.sparse.kernels import Kernel
from attnzoo.sparse.layout import SparsePattern

__all__ = ["MASKED_CHUNK_BYTES", "masked_gather_attention"]

MASKED_CHUNK_BYTES = 2 * 2**20
"""Query rows per kernel call: as many blocks as keep one chunk's gathered keys under this size (the kernel's
working set then stays in cache, as for :data:`attnzoo.sparse.dense.GROUP_CHUNK_BYTES`)."""


class _Chunk(NamedTuple):
    """One kernel call: query blocks ``rows``; ``window``: its keys are a strided view (see ``_Slots``);
    ``gaps``: some query or key slot of it is empty (the mask must then check the slots)."""

    rows: slice
    window: bool
    gaps: bool


@dataclass
class _Slots:
    """Index maps of one call: pattern slots <-> tokens, flattened over (batch, head).

    Attributes:
        src: ``(B*H*L,)`` token row of each slot among the ``B*H*N + 1`` rows of a flattened result (virtual token
            ``r * N + i`` of a pattern with ``copies`` is token i); empty slots write the extra last row.
        read: ``src`` with empty slots reading row 0 instead (any row: empty slots are masked as keys and
            see no key as queries).
        q_pos: ``(H*nB, bs)`` position (virtual token) of each query slot (-1 = empty).
        kv_pos: ``(H*nB, K*bs)`` position of each gathered key slot (-1 = empty or not visited).
        tokens: N, tokens per sequence (positions modulo N are tokens).
        kv_blocks: ``(B*H*nB, K)`` index of each visited key block among the ``B*H*nB`` slot blocks; with K = 2
            ordered (previous, own), so that a look-back layout (Reformer's chunks) reads both as one window.
        windows: for each of :meth:`chunks`, whether every query block ``f`` in it visits exactly blocks ``f - 1``
            and ``f``: its keys are then a strided view of the slot tensor (no gather).
        gaps: for each of :meth:`chunks`, whether it has an empty query or key slot.
    """

    src: Tensor
    read: Tensor
    q_pos: Tensor
    kv_pos: Tensor
    kv_blocks: Tensor
    tokens: int
    rows_per_call: int
    windows: list[bool]
    gaps: list[bool]

    @classmethod
    def build(cls, pattern: SparsePattern, b: int, h: int, n: int, row_bytes: int, device: torch.device) -> _Slots:
        layout = pattern.layout
        bs, nb, kk = layout.block_size, layout.num_blocks, layout.max_visits
        length = nb * bs
        pos = pattern.slot_positions().to(device).expand(h, length)
        heads = torch.arange(h, device=device)
        src = torch.where(pos >= 0, heads[:, None] * n + pos % n, b * h * n)
        src = (torch.arange(b, device=device)[:, None, None] * (h * n) + src).reshape(-1)
        src = src.clamp_max(b * h * n)  # empty slots of every batch item share the extra row
        read = src.masked_fill(src == b * h * n, 0)
        idx = layout.kv_indices.to(device).expand(h, nb, kk)
        valid = layout.kv_valid.to(device).expand(h, nb, kk)
        blocks = heads[:, None, None] * nb + idx  # (H, nB, K) among the H*nB blocks of one batch item
        by_block = pos.reshape(h * nb, bs)
        kv_pos = by_block[blocks.reshape(-1)].view(h, nb, kk, bs).masked_fill(~valid[..., None], -1)
        kv_blocks = (torch.arange(b, device=device)[:, None] * (h * nb) + blocks.reshape(1, -1)).view(b * h * nb, kk)
        if kk == 2:  # (previous, own): the column order of a call is free, its mask follows kv_pos
            kv_blocks, kv_pos = kv_blocks.flip(1), kv_pos.flip(2)
        rows = max(1, min(b * h * nb, MASKED_CHUNK_BYTES // max(kk * bs * row_bytes, 1)))
        total = b * h * nb
        calls = math.ceil(total / rows)

        def per_call(flags: Tensor, every: bool) -> list[bool]:
            """``(B*H*nB,)`` flags per query block -> per kernel call: all of them (``every``) or any."""
            flags = torch.nn.functional.pad(flags, (0, calls * rows - total), value=every).view(calls, rows)
            return (flags.all(1) if every else flags.any(1)).tolist()

        windows = [False] * calls
        if kk == 2:
            flat = torch.arange(total, device=device)
            windows = per_call((kv_blocks[:, 0] == flat - 1) & (kv_blocks[:, 1] == flat), every=True)
        kv_pos = kv_pos.reshape(h * nb, kk * bs)
        gaps = per_call(((by_block < 0).any(1) | (kv_pos < 0).any(1)).repeat(b), every=False)
        return cls(src, read, by_block, kv_pos, kv_blocks, n, rows, windows, gaps)

    def chunks(self) -> list[_Chunk]:
        """The kernel calls, in order over the ``B*H*nB`` query blocks."""
        total, step = self.kv_blocks.shape[0], self.rows_per_call
        return [
            _Chunk(slice(s, min(s + step, total)), w, g)
            for s, w, g in zip(range(0, total, step), self.windows, self.gaps, strict=True)
        ]


def _allowed(pattern: SparsePattern, slots: _Slots, chunk: _Chunk, mask: Tensor | None, causal: bool) -> Tensor:
    """``(R, bs, K*bs)`` bool: which (query slot, key slot) pairs of the chunk's query blocks take part.

    A pair takes part when both slots hold tokens, ``mask_mod`` and ``causal`` allow it and the key is a real
    token of the padding ``mask`` ``(B, N)``. Each condition costs one pass over the chunk's pairs; the slot
    checks run only for chunks with empty slots.
    """
    rows = chunk.rows
    per_item = slots.q_pos.shape[0]
    block = torch.arange(rows.start, rows.stop, device=slots.q_pos.device)
    item, block = block // per_item, block % per_item
    q_pos, kv_pos = slots.q_pos[block][:, :, None], slots.kv_pos[block][:, None, :]  # (R, bs, 1), (R, 1, K*bs)
    shape = (q_pos.shape[0], q_pos.shape[1], kv_pos.shape[2])
    conditions = []
    if pattern.mask_mod is not None:
        conditions.append(pattern.mask_mod(torch.zeros((), dtype=torch.long), q_pos.clamp_min(0), kv_pos.clamp_min(0)))
    if causal:
        conditions.append(kv_pos <= q_pos)
    if mask is not None:
        conditions.append(mask[item[:, None, None], kv_pos.clamp_min(0) % slots.tokens])
    if not conditions or chunk.gaps:
        conditions.append(q_pos >= 0)
        conditions.append(kv_pos >= 0)
    ok = conditions[0].expand(shape)
    if len(conditions) > 1:
        ok = torch.logical_and(ok, conditions[1])  # a new tensor: the rest combine in place
        for condition in conditions[2:]:
            ok &= condition
    return ok


def _bias(ok: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask ``(1, R, bs, S)``: 0 where ``ok``, ``-inf`` elsewhere."""
    return torch.where(ok, torch.zeros((), dtype=dtype), torch.full((), float("-inf"), dtype=dtype))[None]


class _MaskedGather(torch.autograd.Function):
    """Slot-order attention with per-chunk masks; returns token-order ``(out, lse)``, a token's slots merged.

    Backward: every slot of a token is given the token's (merged) output and log-sum-exp, the exact gradient
    of the softmax over the union of the slots' keys (as the engine's union of patterns), so no slot needs
    the gradient of its own log-sum-exp.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pattern: SparsePattern,
        slots: _Slots,
        mask: Tensor | None,
        causal: bool,
        scale: float,
        kernel: Kernel,
    ):
        bs = pattern.layout.block_size
        qs, ks, vs = (_to_slots(x, slots).view(-1, bs, x.shape[-1]) for x in (q, k, v))
        out = qs.new_empty(*qs.shape[:2], v.shape[-1])
        lse = qs.new_empty(qs.shape[:2], dtype=torch.promote_types(q.dtype, torch.float32))
        allowed = [_allowed(pattern, slots, chunk, mask, causal) for chunk in slots.chunks()]  # kept for backward
        for (rows, window, _), ok in zip(slots.chunks(), allowed, strict=True):
            kc, vc = _keys(ks, vs, slots, rows, window)
            oc, lc = kernel.forward(qs[None, rows], kc, vc, _bias(ok, q.dtype), False, scale, None)
            out[rows] = oc[0]
            lse[rows] = lc[0].masked_fill(~ok.any(-1), float("-inf"))
        shape = q.shape[:3]
        if pattern.copies == 1:
            out_t, lse_t = _to_tokens(out, slots, shape, 0.0), _to_tokens(lse, slots, shape, float("-inf"))
        else:
            out_t, lse_t = _merge_copies(out, lse, slots, shape)
        ctx.save_for_backward(qs, ks, vs, out_t, lse_t, *allowed)
        ctx.slots, ctx.scale, ctx.kernel = slots, scale, kernel
        ctx.set_materialize_grads(False)
        return out_t, lse_t

    @staticmethod
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        qs, ks, vs, out_t, lse_t, *allowed = ctx.saved_tensors
        slots: _Slots = ctx.slots
        bs = qs.shape[1]
        empty = torch.isinf(lse_t)

        def per_slot(x: Tensor) -> Tensor:
            return _to_slots(x, slots).view(*qs.shape[:2], *x.shape[3:])

        out = per_slot(out_t)
        lse = per_slot(lse_t.masked_fill(empty, 0.0)[..., None])[..., 0]
        douts = torch.zeros_like(out) if dout is None else per_slot(dout)
        dlses = None if dlse is None else per_slot(dlse.masked_fill(empty, 0.0)[..., None])[..., 0]
        total = lse_t.numel()
        dq = qs.new_zeros(total + 1, qs.shape[-1])  # token rows + the empty slots' row
        dk, dv = torch.zeros_like(ks), torch.zeros_like(vs)  # by slot
        by_block = slots.src.view(-1, bs)
        for (rows, window, _), ok in zip(slots.chunks(), allowed, strict=True):
            kc, vc = _keys(ks, vs, slots, rows, window)
            dqc, dkc, dvc = ctx.kernel.backward(
                douts[None, rows], None if dlses is None else dlses[None, rows], qs[None, rows], kc, vc,
                out[None, rows], lse[None, rows], _bias(ok, qs.dtype), False, ctx.scale, None,
            )  # fmt: skip
            dq.index_add_(0, by_block[rows].reshape(-1), dqc.reshape(-1, dqc.shape[-1]))
            for full, part in ((dk, dkc[0]), (dv, dvc[0])):
                if window:  # blocks f - 1 and f of each query block f
                    full[rows.start - 1 : rows.stop - 1] += part[:, :bs]
                    full[rows] += part[:, bs:]
                else:
                    full.index_add_(0, slots.kv_blocks[rows].reshape(-1), part.reshape(-1, bs, part.shape[-1]))
        shape = lse_t.shape
        grads = [dq[:total]] + [
            g.new_zeros(total + 1, g.shape[-1]).index_add_(0, slots.src, g.view(-1, g.shape[-1]))[:total]
            for g in (dk, dv)
        ]
        return (*(g.view(*shape, -1) for g in grads), None, None, None, None, None, None)


def _to_slots(x: Tensor, slots: _Slots) -> Tensor:
    """``(B, H, N, e)`` tokens -> ``(B*H*L, e)`` slots (empty slots read token row 0)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, slots.read)


def _to_tokens(x: Tensor, slots: _Slots, shape: torch.Size, fill: float) -> Tensor:
    """Slot values ``(B*H*nB, bs[, e])`` -> tokens ``(B, H, N[, e])`` when each token holds at most one slot;
    tokens in no slot get ``fill``."""
    tail = x.shape[2:]
    total = shape.numel()
    rows = x.new_full((total + 1, *tail), fill)
    rows.index_copy_(0, slots.src, x.reshape(-1, *tail))  # the empty slots all land in the extra row
    return rows[:total].view(*shape, *tail)


def _merge_copies(out: Tensor, lse: Tensor, slots: _Slots, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Log-sum-exp merge of each token's slots: ``out (B*H*nB, bs, e)``, ``lse (B*H*nB, bs)`` -> token ``(out,
    lse)``: the softmax over the union of the slots' keys; 0 and ``-inf`` where no slot sees a key."""
    total = shape.numel()
    lse = lse.reshape(-1)
    top = lse.new_full((total + 1,), float("-inf")).scatter_reduce_(0, slots.src, lse, "amax")
    top = top.masked_fill_(torch.isinf(top), 0.0)
    weight = torch.exp(lse - top[slots.src])  # 0 for slots without keys
    norm = lse.new_zeros(total + 1).index_add_(0, slots.src, weight)
    merged_lse = top + torch.log(norm)  # -inf where no slot has a key
    weight = weight / norm.clamp_min(torch.finfo(norm.dtype).tiny)[slots.src]
    flat = out.reshape(-1, out.shape[-1])
    merged = flat.new_zeros(total + 1, flat.shape[-1]).index_add_(0, slots.src, flat * weight[:, None].to(flat.dtype))
    return merged[:total].view(*shape, -1), merged_lse[:total].view(shape)


def _keys(ks: Tensor, vs: Tensor, slots: _Slots, rows: slice, window: bool) -> tuple[Tensor, Tensor]:
    """Visited key and value blocks of query blocks ``rows``: each ``(1, R, K*bs, e)``; a strided view of blocks
    ``f - 1, f`` per query block f when ``window``, else gathered."""
    r = rows.stop - rows.start
    if window:
        return tuple(  # type: ignore[return-value]
            x.as_strided((1, r, 2 * x.shape[1], x.shape[2]), (0, x.stride(0), x.stride(1), x.stride(2)),
                         x.storage_offset() + (rows.start - 1) * x.stride(0))
            for x in (ks, vs)
        )  # fmt: skip
    flat = slots.kv_blocks[rows].reshape(-1)
    return ks.index_select(0, flat).view(1, r, -1, ks.shape[-1]), vs.index_select(0, flat).view(1, r, -1, vs.shape[-1])


def masked_gather_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: SparsePattern,
    mask: Tensor | None,
    causal: bool,
    scale: float,
    kernel: Kernel,
) -> tuple[Tensor, Tensor]:
    """Softmax attention restricted to ``pattern`` (which declares ``masked_gather``), one masked call per chunk.

    A pattern with ``copies`` R runs over the ``R * N`` virtual tokens of R copies of the inputs (never built:
    slots read their token) and each token's slots are merged by log-sum-exp.

    Args:
        q, k, v: ``(B, H, N, d)``; ``mask``: ``(B, N)`` bool padding mask (True = real) or None;
        causal: keys j <= i only (on positions; patterns with ``copies`` express it in ``mask_mod``).

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``, 0 and ``-inf`` for tokens that see no key or hold no slot.
    """
    b, h, n, d = q.shape
    row_bytes = max(d, v.shape[-1]) * q.element_size()
    slots = _Slots.build(pattern, b, h, n, row_bytes, q.device)
    return _MaskedGather.apply(q, k, v, pattern, slots, mask, causal, scale, kernel)
