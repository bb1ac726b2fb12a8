"""One masked kernel call per chunk of query blocks, for patterns whose visited blocks all need the element mask.

The block-sparse plan (:mod:`.plan`) separates a chunk's fully allowed key blocks (no element mask) from the
partial ones, two kernel calls merged by log-sum-exp. Where no visited block is full (Reformer's sorted hash
chunks: a query's own chunk holds the query itself, which it must not attend), that split buys nothing and
costs a second call and a merge per chunk, and the slot maps of a general pattern (tokens in several slots)
cost gathers of every tensor in both passes. A pattern that declares ``masked_gather`` (each token in at most
one slot per head) runs here instead: each chunk of query blocks gathers its query rows and visited key rows
from the token tensors with one ``index_select`` each (no slot-order copy of the whole sequence: on this
CPU such temporaries cost more in fresh page mappings than the gathers themselves), gets one additive mask
built from the slots' positions (``mask_mod``, causality, empty slots, padding), and its results go straight
to token order. The backward gathers again chunk by chunk (memory O(N d) plus one chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attnzoo.sparse.kernels import Kernel
from attnzoo.sparse.layout import SparsePattern
from attnzoo.sparse.threads import one_thread_backward

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


class _Scratch:
    """Per-chunk temporaries written into buffers kept for the whole call: a fresh one per chunk (a few MiB)
    is mapped afresh by glibc on every allocation here, which costs more than the work written into it."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A ``shape`` tensor of ``dtype`` (default ``like``'s) on ``like``'s device, reusing ``name``'s buffer."""
        dtype = dtype or like.dtype
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.empty(size, dtype=dtype, device=like.device)
        return buffer[:size].view(shape)

    def bias(self, ok: Tensor, dtype: torch.dtype) -> Tensor:
        """Additive mask ``(1, R, bs, S)``: 0 where ``ok``, ``-inf`` elsewhere."""
        out = self.take("bias", (1, *ok.shape), ok, dtype)
        blocked = torch.full((), float("-inf"), dtype=dtype)
        return torch.where(ok, torch.zeros((), dtype=dtype), blocked, out=out[0])[None]


class _Rows:
    """A call's token rows, flattened ``(B*H*N, e)``, read chunk by chunk in slot order (no slot-order copy of
    the whole sequence: those would be temporaries of several times the input's size)."""

    def __init__(self, slots: _Slots, bs: int) -> None:
        self.slots, self.bs = slots, bs
        self.read, self.src = slots.read.view(-1, bs), slots.src.view(-1, bs)
        self.scratch = _Scratch()

    def _gather(self, name: str, x: Tensor, index: Tensor) -> Tensor:
        """``x[index]`` for a flat index, into the scratch buffer ``name``: ``(len(index), e)``."""
        out = self.scratch.take(name, (index.numel(), x.shape[-1]), x)
        return torch.index_select(x, 0, index, out=out)

    def queries(self, name: str, x: Tensor, rows: slice) -> Tensor:
        """Rows of query blocks ``rows``: ``(1, R, bs, e)``."""
        return self._gather(name, x, self.read[rows].reshape(-1)).view(1, rows.stop - rows.start, self.bs, -1)

    def key_blocks(self, rows: slice, window: bool) -> Tensor:
        """Read index of the key blocks of query blocks ``rows``: blocks ``f - 1 .. f_last`` when ``window``,
        ``(R + 1, bs)``; else the visited blocks, ``(R, K, bs)``."""
        if window:
            return self.read[rows.start - 1 : rows.stop]
        return self.read[self.slots.kv_blocks[rows]]

    def keys(self, name: str, x: Tensor, rows: slice, window: bool) -> Tensor:
        """Visited keys of query blocks ``rows``: ``(1, R, K*bs, e)``; with ``window`` a strided view over the
        ``R + 1`` gathered blocks (query block f reads blocks f - 1 and f)."""
        r, bs = rows.stop - rows.start, self.bs
        blocks = self._gather(name, x, self.key_blocks(rows, window).reshape(-1))
        e = x.shape[-1]
        if window:
            return blocks.as_strided((1, r, 2 * bs, e), (0, bs * e, e, 1))
        return blocks.view(1, r, -1, e)

    def add_keys(self, target: Tensor, part: Tensor, rows: slice, window: bool) -> None:
        """Add key gradients ``part (R, K*bs, e)`` of query blocks ``rows`` into token rows ``target``."""
        bs, e = self.bs, part.shape[-1]
        if window:  # block f - 1 + j gets the first half of row j and the second half of row j - 1
            merged = self.scratch.take("window", (part.shape[0] + 1, bs, e), part)
            merged[:-1] = part[:, :bs]
            merged[-1] = 0
            merged[1:] += part[:, bs:]
            target.index_add_(0, self.src[rows.start - 1 : rows.stop].reshape(-1), merged.view(-1, e))
        else:
            target.index_add_(0, self.src[self.slots.kv_blocks[rows]].reshape(-1), part.reshape(-1, e))


class _MaskedGather(torch.autograd.Function):
    """Slot-order attention with per-chunk masks; returns token-order ``(out, lse)``, a token's slots merged.

    Each chunk gathers its query and key rows from the token tensors, so no whole-sequence slot-order copy is
    made (the forward keeps slot-order outputs only to merge copies). Backward: every slot of a token is given
    the token's (merged) output and log-sum-exp, the exact gradient of the softmax over the union of the
    slots' keys (as the engine's union of patterns), so no slot needs the gradient of its own log-sum-exp.
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
        rows_of = _Rows(slots, bs)
        qf, kf, vf = (x.reshape(-1, x.shape[-1]) for x in (q, k, v))
        shape, total = q.shape[:3], q.shape[:3].numel()
        lse_dtype = torch.promote_types(q.dtype, torch.float32)
        if pattern.copies == 1:  # straight to token rows (+ the empty slots' row)
            out = v.new_zeros(total + 1, v.shape[-1])
            lse = q.new_full((total + 1,), float("-inf"), dtype=lse_dtype)
        else:
            out = v.new_empty(slots.src.numel(), v.shape[-1])
            lse = q.new_empty(slots.src.numel(), dtype=lse_dtype)
        allowed = [_allowed(pattern, slots, chunk, mask, causal) for chunk in slots.chunks()]  # kept for backward
        for (rows, window, _), ok in zip(slots.chunks(), allowed, strict=True):
            kc, vc = rows_of.keys("k", kf, rows, window), rows_of.keys("v", vf, rows, window)
            bias = rows_of.scratch.bias(ok, q.dtype)
            oc, lc = kernel.forward(rows_of.queries("q", qf, rows), kc, vc, bias, False, scale, None)
            lc = lc[0].masked_fill(~ok.any(-1), float("-inf"))
            if pattern.copies == 1:
                where = rows_of.src[rows].reshape(-1)
                out.index_copy_(0, where, oc.reshape(-1, oc.shape[-1]))
                lse.index_copy_(0, where, lc.reshape(-1))
            else:
                at = slice(rows.start * bs, rows.stop * bs)
                out[at], lse[at] = oc.reshape(-1, oc.shape[-1]), lc.reshape(-1)
        if pattern.copies == 1:
            out_t, lse_t = out[:total].view(*shape, -1), lse[:total].view(shape)
        else:
            out_t, lse_t = _merge_copies(out, lse, slots, shape)
        ctx.save_for_backward(q, k, v, out_t, lse_t, *allowed)
        ctx.slots, ctx.scale, ctx.kernel = slots, scale, kernel
        ctx.set_materialize_grads(False)
        return out_t, lse_t

    @staticmethod
    @one_thread_backward
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, out_t, lse_t, *allowed = ctx.saved_tensors
        slots: _Slots = ctx.slots
        rows_of = _Rows(slots, allowed[0].shape[1])
        qf, kf, vf = (x.reshape(-1, x.shape[-1]) for x in (q, k, v))
        empty = torch.isinf(lse_t)
        out, lse = out_t.reshape(-1, out_t.shape[-1]), lse_t.masked_fill(empty, 0.0).reshape(-1, 1)
        douts = None if dout is None else dout.reshape(out.shape)
        dlses = None if dlse is None else dlse.masked_fill(empty, 0.0).reshape(-1, 1)
        total = lse_t.numel()
        dq, dk, dv = (x.new_zeros(total + 1, x.shape[-1]) for x in (q, k, v))  # token rows + the empty slots' row
        for (rows, window, _), ok in zip(slots.chunks(), allowed, strict=True):
            kc, vc = rows_of.keys("k", kf, rows, window), rows_of.keys("v", vf, rows, window)
            outc = rows_of.queries("out", out, rows)
            dq_c, dk_c, dv_c = ctx.kernel.backward(
                torch.zeros_like(outc) if douts is None else rows_of.queries("dout", douts, rows),
                None if dlses is None else rows_of.queries("dlse", dlses, rows)[..., 0],
                rows_of.queries("q", qf, rows), kc, vc, outc, rows_of.queries("lse", lse, rows)[..., 0],
                rows_of.scratch.bias(ok, q.dtype), False, ctx.scale, None,
            )  # fmt: skip
            dq.index_add_(0, rows_of.src[rows].reshape(-1), dq_c.reshape(-1, dq_c.shape[-1]))
            rows_of.add_keys(dk, dk_c[0], rows, window)
            rows_of.add_keys(dv, dv_c[0], rows, window)
        shape = lse_t.shape
        return (*(g[:total].view(*shape, -1) for g in (dq, dk, dv)), None, None, None, None, None, None)


def _merge_copies(out: Tensor, lse: Tensor, slots: _Slots, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Log-sum-exp merge of each token's slots: ``out (B*H*L, e)``, ``lse (B*H*L,)`` -> token ``(out, lse)``: the
    softmax over the union of the slots' keys; 0 and ``-inf`` where no slot sees a key. Scales ``out`` in place."""
    total = shape.numel()
    top = lse.new_full((total + 1,), float("-inf")).scatter_reduce_(0, slots.src, lse, "amax")
    top = top.masked_fill_(torch.isinf(top), 0.0)
    weight = torch.exp(lse - top[slots.src])  # 0 for slots without keys
    norm = lse.new_zeros(total + 1).index_add_(0, slots.src, weight)
    merged_lse = top + torch.log(norm)  # -inf where no slot has a key
    weight = weight / norm.clamp_min(torch.finfo(norm.dtype).tiny)[slots.src]
    merged = out.new_zeros(total + 1, out.shape[-1]).index_add_(0, slots.src, out.mul_(weight[:, None].to(out.dtype)))
    return merged[:total].view(*shape, -1), merged_lse[:total].view(shape)


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
