"""Causal EVA (efficient-attention ``CausalEVAttention``): left-extended local blocks + earlier chunks' summaries."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.eva.chunks import t5_bucket, t5_num_buckets
from attnzoo.ops.eva.sparse import ChunkKeys, chunk_summaries
from attnzoo.ops.lara.segments import Segments, strided_segments
from attnzoo.options import check_int
from attnzoo.sparse import SparsePattern, blockwise_window, merge_partials, sparse_attention
from attnzoo.sparse.kernels import row_dot
from attnzoo.sparse.plan import ScoreMod

__all__ = [
    "causal_chunk_keys",
    "causal_eva_attention",
    "causal_eva_chunk_size",
    "causal_eva_segments",
    "causal_t5_bias",
    "real_chunks",
]


def causal_chunk_keys(q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Without learned maps: ``k_hat = k_bar``, ``mu = q_bar + k_bar`` (causal EVA has no 1/2)."""
    return k_bar, q_bar + k_bar


def causal_eva_chunk_size(n: int, window_size: int, chunk_size: int | None, num_chunks: int | None) -> int:
    """r: ``chunk_size``, else ``floor(N' / num_chunks)`` with ``N' = ceil(N / w) w`` (at least 1), else w.

    With ``num_chunks`` N is the tensor's length, so in a padded batch r depends on the padding
    (official behaviour, quirk E11); ``chunk_size`` has no such dependence.
    """
    if chunk_size is not None:
        return chunk_size
    if num_chunks is not None:
        return max(1, (-(-n // window_size) * window_size) // num_chunks)
    return window_size


def causal_eva_segments(mask: Tensor | None, b: int, n: int, w: int, r: int, compat: bool) -> Segments:
    """Non-overlapping chunks of r tokens tiling ``N' = ceil(N / w) w``; ``compat``: means over all r slots."""
    return strided_segments(
        n, r, 0, b, torch.device("cpu") if mask is None else mask.device, padded_len=-(-n // w) * w, count_slots=compat
    )


def real_chunks(seg: Segments, mask: Tensor | None) -> Tensor:
    """``(B, C)`` bool: the chunk holds a real token (chunks without one are never attended, unless compat)."""
    return (seg if mask is None else Segments(seg.ids, seg.member & mask[:, None], seg.count)).nonempty()


def _local_pattern(n: int, w: int, e: int, causal: bool) -> SparsePattern:
    """Query block ``[tw, tw + w)`` sees keys ``[tw - e, tw + w)`` (the engine adds ``kv <= q`` when causal)."""
    base = blockwise_window(n, w, e)
    if causal or e == 0:
        return base

    def left_only(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        start = (q // w) * w
        return (kv >= start - e) & (kv < start + w)

    return SparsePattern(f"causal_eva_window(w={w}, e={e})", base.layout, left_only, None, n)


def causal_t5_bias(table: Tensor, w: int, e: int, scale: float, shift: int) -> ScoreMod:
    """T5 bias ``s * table[bucket(kv - q + shift), 0]`` (causal buckets, one column shared by all heads)."""
    num = table.shape[0]

    def t5(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return scale * table[t5_bucket(kv - q + shift, num, w + e, bidirectional=False), 0]

    return t5


def causal_eva_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = True,
    window_size: int = 4,
    chunk_size: int | None = None,
    num_chunks: int | None = None,
    overlap_window: bool = False,
    t5_table: Tensor | None = None,
    chunk_keys: ChunkKeys | None = None,
    noise: Tensor | None = None,
    dropout_p: float = 0.0,
    compat: bool = False,
    scale: float | None = None,
    executor: str = "auto",
) -> Tensor:
    """Causal EVA: exact attention over a left-extended local block plus summaries of earlier chunks.

    Query i (block ``t = i // w``) attends keys ``[tw - e, tw + w)`` exactly (``e = w`` with
    ``overlap_window``; only keys ``<= i`` when causal) and, in the same softmax, chunk c through logit
    ``s q_i . k_hat_c`` and value ``beta_c`` (EVA's randomized summary). Chunks have r tokens (see
    :func:`causal_eva_chunk_size`); when causal, a chunk is seen only once it ends before the local
    block starts (``compat``: official rule ``c < i // r``, which also re-counts chunks inside the window;
    non-causal compat: every chunk). Time O(N (w + e + C) d). Zheng et al., ICLR 2023;
    ``shared/specs/efficient-attention-eva-lara-longnet.md`` §7.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: token i uses tokens ``<= i`` only (official ``causal`` argument).
        window_size: w. chunk_size: r (w must be a multiple). num_chunks: r from it when chunk_size is None.
        overlap_window: widen each key block by a full window to the left.
        t5_table: ``(num_buckets, 1)`` T5 bias shared by all heads (causal buckets), or None.
        chunk_keys: ``(q_bar, k_bar) -> (k_hat, mu)``; default :func:`causal_chunk_keys`.
        noise: ``(B, H, C, d)`` training draws, None in eval.
        dropout_p: dropout on the joint attention probabilities (official, training).
        compat: official quirks (chunk means over all r slots, chunks seen twice, T5 offset e).
        scale: s, default ``d ** -0.5``. executor: the sparse engine's executor.

    Returns:
        ``(B, H, N, d)``; rows of padded queries are 0.

    Raises:
        ValueError: chunk_size not dividing window_size, bad table or noise shapes.

    Reference: :func:`attnzoo.ops.eva.naive_causal_eva_attention`.
    """
    check_qkv(q, k, v, cross=False)
    check_int("window_size", window_size, minimum=1)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
        if window_size % chunk_size:
            raise ValueError(f"window_size ({window_size}) must be a multiple of chunk_size ({chunk_size})")
    if num_chunks is not None:
        check_int("num_chunks", num_chunks, minimum=1)
    b, h, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    scale = d**-0.5 if scale is None else float(scale)
    w = window_size
    e = max(1, w) if overlap_window else 0
    if t5_table is not None and tuple(t5_table.shape) != (t5_num_buckets(w, e), 1):
        raise ValueError(f"t5_table must have shape {(t5_num_buckets(w, e), 1)}, got {tuple(t5_table.shape)}")
    score_mod = None if t5_table is None else causal_t5_bias(t5_table, w, e, scale, e if compat else 0)
    local_out, local_lse = sparse_attention(
        q,
        k,
        v,
        _local_pattern(n, w, e, causal),
        mask=mask,
        causal=causal,
        scale=scale,
        dropout_p=dropout_p,
        executor=executor,
        score_mod=score_mod,
    )
    if local_lse is None:
        raise ValueError(f"executor {executor!r} returns no log-sum-exp; causal EVA needs it (use 'gather')")
    r = causal_eva_chunk_size(n, w, chunk_size, num_chunks)
    seg = causal_eva_segments(mask, b, n, w, r, compat)
    if noise is not None and tuple(noise.shape) != (b, h, seg.count, d):
        raise ValueError(f"noise must have shape {(b, h, seg.count, d)}, got {tuple(noise.shape)}")
    k_hat, beta = chunk_summaries(q, k, v, seg, mask, chunk_keys or causal_chunk_keys, noise, scale)
    pos, ends = torch.arange(n, device=q.device), (torch.arange(seg.count, device=q.device) + 1) * r
    start = (pos // w) * w
    if compat:
        hidden = ends[None] > (pos // r * r)[:, None] if causal else torch.zeros(n, seg.count, dtype=torch.bool)
    elif causal:
        hidden = ends[None] > (start - e)[:, None]
    else:
        hidden = (ends[None] - r >= (start - e)[:, None]) & (ends[None] <= (start + w)[:, None])
    hidden = hidden.to(q.device)[None]
    if not compat:
        hidden = hidden | ~real_chunks(seg, mask)[:, None, :]
    global_out, global_lse = _chunk_attention(q, scale * k_hat, beta, hidden, dropout_p)
    out, _ = merge_partials([local_out.to(q.dtype), global_out], [local_lse.to(global_lse.dtype), global_lse])
    out = out.to(q.dtype)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)


CHUNK_ROWS_BYTES = 2 * 2**20
"""Query rows per step of :func:`_chunk_attention`: as many as keep one step's logits under this size."""


def _chunk_attention(q: Tensor, keys: Tensor, beta: Tensor, hidden: Tensor, dropout_p: float) -> tuple[Tensor, Tensor]:
    """Softmax of ``q keys^T`` (``hidden`` pairs excluded) applied to ``beta``, by blocks of query rows.

    A block multiplies only the chunks up to the last one any of its rows sees (when causal, the chunks
    before the block: about half the N x C logits), and its logits stay small (no N x C temporary). The
    backward reads the blocks' saved probabilities (N x C in all, kept as blocks; it recomputing them
    instead was 20 % slower at N = 16384) and needs no autograd graph of the softmax.

    Args:
        q: ``(B, H, N, d)``; keys: ``(B, H, C, d)`` (scaled); beta: ``(B, H, C, dv)``;
        hidden: ``(B|1, N, C)`` bool, True = the row does not see the chunk.
        dropout_p: dropout on the probabilities (their keep masks, one byte per logit, are saved).

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``; rows that see no chunk give 0 and ``-inf``.
    """
    b, h, n, _ = q.shape
    chunks = keys.shape[-2]
    seen = (~hidden).any(0)  # (N, C)
    last_seen = torch.where(seen, torch.arange(1, chunks + 1, device=seen.device), 0).amax(-1)  # (N,)
    step = max(1, CHUNK_ROWS_BYTES // max(1, b * h * chunks * q.element_size()))
    block_seen = F.pad(last_seen, (0, -n % step)).view(-1, step).amax(-1).tolist()  # one host sync
    blocks = [(slice(i, i + step), c) for i, c in zip(range(0, n, step), block_seen, strict=True)]
    return _ChunkSoftmax.apply(q, keys, beta, hidden, blocks, dropout_p)


class _ChunkSoftmax(torch.autograd.Function):
    """:func:`_chunk_attention`'s blocks with a written-out backward from the blocks' saved probabilities P
    (``(B, H, rows, c)`` each; the largest is ``CHUNK_ROWS_BYTES``): ``dS = P * (dP - rowsum(dO * O) + dlse)``,
    ``dP = dO beta^T`` (times the kept/(1 - p) mask with dropout)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, keys: Tensor, beta: Tensor, hidden: Tensor, blocks: list[tuple[slice, int]], p: float
    ) -> tuple[Tensor, Tensor]:
        b, h, n, _ = q.shape
        out, lse = q.new_empty(b, h, n, beta.shape[-1]), q.new_full((b, h, n), float("-inf"))
        saved: list[Tensor] = []
        for rows, c in blocks:
            if c == 0:
                out[:, :, rows] = 0
                continue
            logits = (q[:, :, rows] @ keys[:, :, :c].transpose(-1, -2)).masked_fill_(
                hidden[:, None, rows, :c], float("-inf")
            )
            top = logits.amax(-1, keepdim=True).clamp_min_(torch.finfo(q.dtype).min)  # finite: no nan
            probs = logits.sub_(top).exp_()  # 0 where hidden
            total = probs.sum(-1, keepdim=True)
            probs.div_(total.clamp_min(torch.finfo(q.dtype).tiny))
            lse[:, :, rows] = (top + total.log()).squeeze(-1)  # -inf where the row sees nothing
            dropped = probs
            if p > 0:
                keep = torch.rand_like(probs) >= p
                dropped = probs * keep / (1 - p)
                saved.append(keep)
            out[:, :, rows] = dropped @ beta[:, :, :c]
            saved.append(probs)
        ctx.save_for_backward(q, keys, beta, out, *saved)
        ctx.blocks, ctx.p = blocks, p
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, keys, beta, out, *saved = ctx.saved_tensors
        dq, dkeys, dbeta = torch.empty_like(q), torch.zeros_like(keys), torch.zeros_like(beta)
        p, blocks = ctx.p, iter(saved)
        for rows, c in ctx.blocks:
            if c == 0:
                dq[:, :, rows] = 0
                continue
            keep = next(blocks) if p > 0 else None
            probs = next(blocks)
            delta = q.new_zeros(probs.shape[:-1]) if dlse is None else -dlse[:, :, rows]
            if dout is None:
                dlogits = torch.zeros_like(probs)
            else:
                dout_rows = dout[:, :, rows]
                delta += row_dot(dout_rows, out[:, :, rows])
                dlogits = dout_rows @ beta[:, :, :c].transpose(-1, -2)  # d(probs after dropout)
                dropped = probs
                if keep is not None:
                    dlogits.mul_(keep).div_(1 - p)
                    dropped = probs * keep / (1 - p)
                dbeta[:, :, :c] += dropped.transpose(-1, -2) @ dout_rows
            dlogits.sub_(delta[..., None]).mul_(probs)
            dq[:, :, rows] = dlogits @ keys[:, :, :c]
            dkeys[:, :, :c] += dlogits.transpose(-1, -2) @ q[:, :, rows]
        return dq, dkeys, dbeta, None, None, None
