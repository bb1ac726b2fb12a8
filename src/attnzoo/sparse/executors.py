"""Executors: interchangeable ways to run a :class:`ChunkPlan` on slot tensors.

* ``gather`` (default on CPU): per chunk of query blocks, gather the visited key/value blocks and
  run a dense kernel on them (:mod:`attnzoo.sparse.kernels`). :func:`gather_forward` and
  :func:`gather_backward` recompute each chunk in the backward pass (the engine wraps them in one
  autograd function), so memory stays O(L * d) plus one chunk; trains on CPU.
* ``gather-autograd``: the same chunks through differentiable torch ops (memory O(L * visited));
  used for a learned ``score_mod`` while training, and as an independent check.
* ``flex``: FlexAttention with a ``BlockMask`` built from the layout (CUDA; CPU for inference only,
  its CPU backward raises). Compiled once per shape.
* ``dense``: the whole L x L mask and a plain masked softmax: tests only.

All return ``(out, lse)``: ``out: (B, H, L, dv)``; ``lse: (B, H, L)`` with ``-inf`` for rows that see no key
(their ``out`` is 0). ``flex`` on CPU returns ``lse = None`` (compiled CPU flex has no log-sum-exp).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.sparse.band import band_backward, band_forward, find_band
from attnzoo.sparse.kernels import Dropout, Kernel, masked_scores
from attnzoo.sparse.plan import Chunk, ChunkPlan
from attnzoo.sparse.threads import kernel_threads
from attnzoo.sparse.trace import note_path, note_scores

__all__ = ["EXECUTORS", "gather_backward", "gather_forward", "run_dense", "run_flex", "run_gather_autograd"]


def _queries(plan: ChunkPlan, start: int, stop: int, q: Tensor) -> Tensor:
    """Queries of query blocks ``[start, stop)``: ``(B, G, bs, d)``."""
    b, h = q.shape[:2]
    return q.view(b, h, plan.nb, plan.bs, -1)[:, :, start:stop].reshape(b, h * (stop - start), plan.bs, -1)


def _keys(plan: ChunkPlan, chunk: Chunk, k: Tensor) -> Tensor:
    """Gathered key (or value) blocks of one kernel call: ``(B, G, span, d)``."""
    b, h = k.shape[:2]
    g = h * (chunk.stop - chunk.start)
    return k.view(b, h * plan.nb, plan.bs, -1).index_select(1, chunk.flat_kv).view(b, g, chunk.span, -1)


def _rows(x: Tensor, plan: ChunkPlan, start: int, stop: int) -> Tensor:
    """Rows of query blocks ``[start, stop)`` of ``x: (B, H, L[, d])`` as ``(B, G, bs[, d])``."""
    b, h = x.shape[:2]
    return x[:, :, start * plan.bs : stop * plan.bs].reshape(b, h * (stop - start), plan.bs, *x.shape[3:])


def _place(target: Tensor, plan: ChunkPlan, start: int, stop: int, value: Tensor) -> None:
    """Write ``value: (B, G, bs[, d])`` into the rows of query blocks ``[start, stop)`` of ``target``."""
    b, h = target.shape[:2]
    rows = slice(start * plan.bs, stop * plan.bs)
    target[:, :, rows] = value.reshape(b, h, (stop - start) * plan.bs, *value.shape[3:])


def _mask_empty(lse: Tensor, has_key: Tensor | None) -> Tensor:
    return lse if has_key is None else lse.masked_fill(~has_key, float("-inf"))


def combine_parts(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Log-sum-exp merge of partial results over disjoint key sets (no autograd; inputs are not modified).

    Accumulates in place into one new buffer: at long N each temporary would be a fresh 32 MiB+
    mapping (glibc), which costs more than the arithmetic.
    """
    if len(outs) == 1:
        return outs[0], lses[0]
    total = torch.logsumexp(torch.stack(lses), dim=0)
    safe = total.masked_fill(torch.isinf(total), 0.0)
    out = torch.mul(outs[0], torch.exp(lses[0] - safe)[..., None].to(outs[0].dtype))
    for part, lse in zip(outs[1:], lses[1:], strict=True):
        out.addcmul_(part, torch.exp(lse - safe)[..., None].to(part.dtype))
    return out, total


def _softmax_lse(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable ``(softmax, logsumexp)`` over the last axis; rows of all ``-inf`` give 0 and ``-inf``.

    The empty rows are replaced by zeros before ``logsumexp`` so that its backward stays finite.
    """
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    lse = torch.logsumexp(scores.masked_fill(empty, 0.0), dim=-1)
    probs = torch.exp(scores - lse[..., None])
    return probs, lse.masked_fill(empty.squeeze(-1), float("-inf"))


def _call_dropout(dropout: Dropout | None, start: int, part: int) -> Dropout | None:
    """The dropout of one kernel call: the same ``p``, a seed of its own (identical in forward and backward)."""
    if dropout is None:
        return None
    p, seed = dropout
    return p, (seed * 1_000_003 + start * 16 + part) % (2**63 - 1)


def gather_forward(
    q: Tensor, k: Tensor, v: Tensor, plan: ChunkPlan, kernel: Kernel, scale: float, dropout: Dropout | None = None
) -> tuple[Tensor, Tensor]:
    """Forward of the fused gather executor on slot tensors (no autograd).

    Each chunk may be several kernel calls over disjoint key sets (full and partial blocks), merged
    by log-sum-exp. Returns ``(out, lse)`` with ``lse = -inf`` on rows without keys. ``dropout``
    ``(p, seed)`` gives each kernel call its own seed derived from ``seed`` and the call's place.
    """
    b, h, length, _ = q.shape
    out = q.new_empty(b, h, length, v.shape[-1])
    lse = q.new_empty(b, h, length, dtype=torch.promote_types(q.dtype, torch.float32))  # the kernels' lse dtype
    band = find_band(plan, kernel, dropout)
    if band is not None:
        note_path("band")
        band_forward(q, k, v, out, lse, plan, band, kernel, scale)
    for start, stop in plan.chunks() if band is None else band.rest:
        qc = _queries(plan, start, stop, q)
        outs, lses = [], []
        for part, chunk in enumerate(plan.chunk(start, stop, q.dtype)):
            kc, vc = _keys(plan, chunk, k), _keys(plan, chunk, v)
            drop = _call_dropout(dropout, start, part)
            oc, lc = kernel.forward(qc, kc, vc, chunk.bias, chunk.causal, scale, drop)
            outs.append(oc)
            lses.append(_mask_empty(lc, chunk.has_key))
        oc, lc = combine_parts(outs, lses)
        _place(out, plan, start, stop, oc)
        _place(lse, plan, start, stop, lc)
    return out, lse


def gather_backward(
    dout: Tensor,
    dlse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    plan: ChunkPlan,
    kernel: Kernel,
    scale: float,
    dropout: Dropout | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the fused gather executor, recomputing chunk by chunk (same ``dropout`` as the forward).

    ``out`` and ``lse`` are the attention's *final* output and log-sum-exp per row: when this
    pattern is one part of a larger union (full/partial blocks, LongNet branches), passing the
    union's values makes each part's gradient contribution exact, as in ring/flash attention.
    ``dlse`` (or ``None``) is the gradient flowing into ``lse``.
    """
    b, h = q.shape[:2]
    dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)  # every query block writes dq
    dk_blocks, dv_blocks = dk.view(b, h * plan.nb, plan.bs, -1), dv.view(b, h * plan.nb, plan.bs, -1)
    empty = torch.isinf(lse)
    # rows without keys (and empty slots): p = exp(s - inf) = 0 in the kernels whatever their bias lets through
    safe_lse = lse.masked_fill(empty, float("inf"))
    if dlse is not None:
        dlse = dlse.masked_fill(empty, 0.0)
    band = find_band(plan, kernel, dropout)
    if band is not None:
        band_backward((dout, dlse), (q, k, v, out, safe_lse), plan, band, kernel, scale, (dq, dk, dv))
    for start, stop in plan.chunks() if band is None else band.rest:
        qc = _queries(plan, start, stop, q)
        oc, doc, lc = (_rows(t, plan, start, stop) for t in (out, dout, safe_lse))
        dlc = None if dlse is None else _rows(dlse, plan, start, stop)
        dqc = torch.zeros_like(qc)
        for part, chunk in enumerate(plan.chunk(start, stop, q.dtype)):
            kc, vc = _keys(plan, chunk, k), _keys(plan, chunk, v)
            drop = _call_dropout(dropout, start, part)
            dqp, dkc, dvc = kernel.backward(doc, dlc, qc, kc, vc, oc, lc, chunk.bias, chunk.causal, scale, drop)
            dqc += dqp
            dk_blocks.index_add_(1, chunk.flat_kv, dkc.reshape(b, -1, plan.bs, dkc.shape[-1]))
            dv_blocks.index_add_(1, chunk.flat_kv, dvc.reshape(b, -1, plan.bs, dvc.shape[-1]))
        _place(dq, plan, start, stop, dqc)
    return dq, dk, dv


def run_gather_autograd(
    q: Tensor, k: Tensor, v: Tensor, plan: ChunkPlan, kernel: Kernel, scale: float, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Gather executor through differentiable torch ops (dropout on the probabilities supported)."""
    b, h = q.shape[:2]
    outs, lses = [], []
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    for start, stop in plan.chunks():
        (chunk,) = plan.chunk(start, stop, q.dtype, split=False)
        qc, kc, vc = _queries(plan, start, stop, q), _keys(plan, chunk, k), _keys(plan, chunk, v)
        probs, lse = _softmax_lse(masked_scores(qc, kc, chunk.bias, chunk.causal, scale))
        probs = F.dropout(probs, dropout_p, training=dropout_p > 0)
        nc = stop - start
        outs.append(torch.matmul(probs, vc).view(b, h, nc * plan.bs, -1))
        lses.append(_mask_empty(lse, chunk.has_key).view(b, h, nc * plan.bs))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def run_dense(q: Tensor, k: Tensor, v: Tensor, plan: ChunkPlan, kernel: Kernel, scale: float) -> tuple[Tensor, Tensor]:
    """Reference executor: the full ``(B, H, L, L)`` allowed-mask and a masked softmax (tests only)."""
    h = q.shape[1]
    allowed = dense_slot_mask(plan)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if plan.score_mod is not None:
        pos = plan.positions.clamp_min(0)
        heads = torch.arange(max(h, pos.shape[0]), device=pos.device)[:, None, None]
        scores = scores + plan.score_mod(heads, pos[:, :, None], pos[:, None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs, lse = _softmax_lse(scores)
    return torch.matmul(probs, v), lse


def dense_slot_mask(plan: ChunkPlan) -> Tensor:
    """``(B|1, H|1, L, L)`` bool over slots: the plan's pattern, padding and causal mask, densely."""
    pattern, bs = plan.pattern, plan.bs
    slot_block = torch.arange(plan.nb * bs, device=plan.positions.device) // bs
    visited = pattern.layout.to_dense().to(plan.positions.device)[:, slot_block][:, :, slot_block]
    pos = plan.positions
    qp, kp = pos[:, :, None], pos[:, None, :]
    allowed = visited & (qp >= 0) & (kp >= 0)
    if pattern.mask_mod is not None:
        heads = torch.arange(allowed.shape[0], device=pos.device)[:, None, None]
        allowed = allowed & pattern.mask_mod(heads, qp.clamp_min(0), kp.clamp_min(0))
    if plan.causal:
        allowed = allowed & (kp <= qp)
    return allowed[None] & plan.key_ok[:, :, None, :]


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def run_flex(
    q: Tensor, k: Tensor, v: Tensor, plan: ChunkPlan, kernel: Kernel, scale: float
) -> tuple[Tensor, Tensor | None]:
    """FlexAttention executor: the layout becomes a ``BlockMask``, the element predicate its ``mask_mod``."""
    from torch.nn.attention.flex_attention import BlockMask

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(
            "executor 'flex' cannot train on CPU (FlexAttention has no CPU backward); use executor='gather'"
        )
    b, h = q.shape[:2]
    pattern = plan.pattern
    valid = plan.kv_valid
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)  # valid entries first
    kv_indices = torch.gather(plan.kv_indices, -1, order).to(torch.int32)
    kv_indices = F.pad(kv_indices, (0, plan.nb - plan.k))  # BlockMask wants one column per key block
    kv_count = valid.sum(-1).to(torch.int32)
    note_scores(round(b * h * int(kv_count.sum()) / kv_count.shape[0]), plan.bs, plan.bs, False)  # visited blocks
    pos, key_ok, causal = plan.positions, plan.key_ok, plan.causal
    hp, hk = pos.shape[0], key_ok.shape[1]
    bk = key_ok.shape[0]

    def mask_mod(bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        qp = pos[hi % hp, qi]
        kp = pos[hi % hp, ki]
        ok = key_ok[bi % bk, hi % hk, ki] & (qp >= 0)
        if pattern.mask_mod is not None:
            ok = ok & pattern.mask_mod(hi, qp, kp)
        if causal:
            ok = ok & (kp <= qp)
        return ok

    length = plan.nb * plan.bs
    block_mask = BlockMask.from_kv_blocks(
        kv_count[None].expand(b, h, -1).contiguous(),
        kv_indices[None].expand(b, h, -1, -1).contiguous(),
        BLOCK_SIZE=plan.bs,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )
    score_mod = None
    if plan.score_mod is not None:
        user_mod = plan.score_mod

        def score_mod(score: Tensor, bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return score + user_mod(hi, pos[hi % hp, qi].clamp_min(0), pos[hi % hp, ki].clamp_min(0))

    flex = _compiled_flex()
    if q.device.type == "cpu":
        # Compiled flex on CPU supports inference without log-sum-exp only.
        with kernel_threads():
            return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale), None
    return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_lse=True)


EXECUTORS = {"gather-autograd": run_gather_autograd, "flex": run_flex, "dense": run_dense}
"""Executors that run one pattern on slot tensors with autograd; ``gather`` (fused) lives in the engine."""
