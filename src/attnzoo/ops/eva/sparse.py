"""EVA: exact local windows through the sparse engine plus one randomized summary per chunk (the fast path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnzoo.ops.common import check_padding_mask, check_qkv, key_mask_bias
from attnzoo.ops.eva.chunks import contained_chunks, eva_segments, t5_bucket, t5_num_buckets
from attnzoo.ops.lara.segments import Segments, segment_mean, segment_softmax
from attnzoo.ops.local import LocalWindow
from attnzoo.ops.local.sparse import local_pattern, rpe_score_mod
from attnzoo.options import check_int
from attnzoo.sparse import merge_partials, sparse_attention
from attnzoo.sparse.dense import attention_with_lse
from attnzoo.sparse.plan import ScoreMod

__all__ = ["ChunkKeys", "chunk_summaries", "default_chunk_keys", "eva_attention", "t5_score_mod"]

ChunkKeys = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(q_bar, k_bar) -> (k_hat, mu)`` on ``(B, H, C, d)`` chunk means: chunk keys and proposal means."""


def default_chunk_keys(q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
    """Without learned maps: ``k_hat = k_bar``, ``mu = (q_bar + k_bar) / 2``."""
    return k_bar, 0.5 * (q_bar + k_bar)


def chunk_summaries(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seg: Segments,
    mask: Tensor | None,
    chunk_keys: ChunkKeys,
    noise: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Chunk keys ``k_hat`` and values ``beta`` (spec §6 steps 5-9), each ``(B, H, C, d)``.

    ``beta_c = sum_{j in c} softmax_j(s w_c.k_j - s|k_j|^2/2) v_j`` with ``w_c = mu_c (+ noise_c)``.
    """
    k_hat, mu = chunk_keys(segment_mean(q, seg, mask), segment_mean(k, seg, mask))
    omega = mu if noise is None else mu + noise
    b, h, c, d = omega.shape
    kk, n = seg.ids.shape[1], q.shape[2]
    if seg.size is not None and mask is None:  # contiguous equal chunks: (C, r) reshape
        logits = _ProposalLogits.apply(k.reshape(b, h, c, seg.size, d), omega, scale).reshape(b, h, 1, n)
    else:
        index = seg.ids.reshape(b, 1, kk * n, 1).expand(b, h, kk * n, d)
        omega_j = omega.gather(2, index).view(b, h, kk, n, d)  # the sample of the chunk token j joins
        squares = torch.linalg.vector_norm(k, dim=-1).square()  # |k_j|^2 without a (B, H, N, d) temporary
        logits = scale * ((omega_j * k[:, :, None]).sum(-1) - 0.5 * squares[:, :, None])
    return k_hat, segment_softmax(logits, v, seg, mask)


class _ProposalLogits(torch.autograd.Function):
    """``s (w_c . k_j - |k_j|^2 / 2)`` for the r tokens j of each chunk c: ``(B, H, C, r, d)`` keys and
    ``(B, H, C, d)`` samples -> ``(B, H, C, r)``. The key gradient ``s dl_j (w_c - k_j)`` is one tensor
    (autograd's composition made three full-size ones and their sum)."""

    @staticmethod
    def forward(ctx: Any, k_chunks: Tensor, omega: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        logits = (omega[..., None, :] @ k_chunks.transpose(-1, -2)).squeeze(-2)
        logits -= 0.5 * torch.linalg.vector_norm(k_chunks, dim=-1).square()
        ctx.save_for_backward(k_chunks, omega)
        ctx.scale = scale
        return logits.mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dlogits: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        k_chunks, omega = ctx.saved_tensors
        r, d = k_chunks.shape[-2:]
        scaled = dlogits * ctx.scale  # (B, H, C, r)
        dk = torch.mul(k_chunks, -scaled[..., None], out=k_chunks.new_empty(k_chunks.shape))  # contiguous
        dk.view(-1, r, d).baddbmm_(scaled.reshape(-1, r, 1), omega.reshape(-1, 1, d))  # + s dl_j w_c, in place
        domega = (scaled[..., None, :] @ k_chunks).squeeze(-2)
        return dk, domega, None


def t5_score_mod(table: Tensor, window: LocalWindow, scale: float, shift: int) -> ScoreMod:
    """T5 bias ``s * table[bucket(kv - q + shift), h]`` (bidirectional buckets; ``shift = e`` is quirk E7)."""
    num, reach = table.shape[0], window.size + window.extension

    def t5(h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return scale * table[t5_bucket(kv - q + shift, num, reach, bidirectional=True), h]

    return t5


def eva_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    window_size: int = 4,
    num_landmarks: int = 49,
    overlap_window: bool = False,
    grid: tuple[int, int] | None = None,
    rpe_table: Tensor | None = None,
    t5_table: Tensor | None = None,
    chunk_keys: ChunkKeys | None = None,
    noise: Tensor | None = None,
    compat: bool = False,
    scale: float | None = None,
    executor: str = "auto",
) -> Tensor:
    """EVA: exact softmax over each query's local block plus one control-variate summary per chunk.

    Query i attends its blockwise window E_i (efficient-attention ``local``, through the sparse engine)
    and C chunk summaries in one softmax: chunk c enters with logit ``s q_i . k_hat_c`` and value
    ``beta_c``, the chunk's random-feature estimate with sample ``w_c ~ N(mu_c, I)`` (``w_c = mu_c`` in
    eval). Chunks all of whose keys lie in E_i are left out; a chunk only partly inside E_i still
    enters through its summary, so its keys in E_i count twice (exactly, and inside the chunk's
    estimate; the official code also keeps the chunks wholly inside, see ``compat``). Time
    O(N (w + 2e + C) d), memory O(N (C + d)). Zheng et al., ICLR 2023 (arXiv 2302.04542);
    ``shared/specs/efficient-attention-eva-lara-longnet.md`` §6.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: must be False (see ``causal_eva``).
        window_size: w; overlap_window: widen key blocks by ``e = max(1, w // 2)`` each side.
        num_landmarks: L, the number of chunks (see :func:`attnzoo.ops.eva.chunks.eva_segments`).
        grid: ``(height, width)`` for 2D tiles (row-major tokens), else None.
        rpe_table: local relative-position table (``LocalWindow.rpe_shape(H)``), or None.
        t5_table: ``(num_buckets, H)`` T5 bias (1D), or None.
        chunk_keys: ``(q_bar, k_bar) -> (k_hat, mu)``, the learned maps; default :func:`default_chunk_keys`.
        noise: ``(B, H, C, d)`` training draws, None in eval.
        compat: efficient-attention's quirks E6/E7 (official chunks widened by e with slot-count means,
            unmasked chunk logits, chunks inside the window counted twice, T5 offset by e).
        scale: s, default ``d ** -0.5``.
        executor: the sparse engine's executor for the local part.

    Returns:
        ``(B, H, N, d)``; rows of padded queries are 0.

    Raises:
        ValueError: ``causal=True``, bad options, T5 with a grid, wrong table shapes.

    Reference: :func:`attnzoo.ops.eva.naive_eva_attention`.
    """
    check_qkv(q, k, v, cross=False)
    if causal:
        raise ValueError("eva cannot be causal; use causal_eva")
    check_int("num_landmarks", num_landmarks, minimum=1)
    if t5_table is not None and grid is not None:
        raise ValueError("the T5 bias (use_t5_rpe) is 1D only; use rpe_table on a grid")
    b, h, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    window = LocalWindow.resolve(mode="blockwise", window_size=window_size, overlap_window=overlap_window, grid=grid)
    if b == 0 or n == 0:
        return v * 0
    scale = d**-0.5 if scale is None else float(scale)
    e = window.extension
    if t5_table is not None and tuple(t5_table.shape) != (t5_num_buckets(window_size, e), h):
        raise ValueError(f"t5_table must have shape {(t5_num_buckets(window_size, e), h)}, got {tuple(t5_table.shape)}")
    if rpe_table is not None and tuple(rpe_table.shape) != window.rpe_shape(h):
        raise ValueError(f"rpe_table must have shape {window.rpe_shape(h)}, got {tuple(rpe_table.shape)}")
    score_mod = None
    if rpe_table is not None:
        score_mod = rpe_score_mod(window, rpe_table)
    elif t5_table is not None:
        score_mod = t5_score_mod(t5_table, window, scale, e if compat else 0)
    local_out, local_lse = sparse_attention(
        q, k, v, local_pattern(window, n), mask=mask, scale=scale, executor=executor, score_mod=score_mod
    )
    if local_lse is None:
        raise ValueError(f"executor {executor!r} returns no log-sum-exp; EVA needs it (use 'gather')")
    seg = eva_segments(
        mask,
        b,
        n,
        window_size=window_size,
        num_landmarks=num_landmarks,
        extension=e,
        grid=grid,
        compat=compat,
        device=q.device,
    )
    if noise is not None and tuple(noise.shape) != (b, h, seg.count, d):
        raise ValueError(f"noise must have shape {(b, h, seg.count, d)}, got {tuple(noise.shape)}")
    k_hat, beta = chunk_summaries(q, k, v, seg, mask, chunk_keys or default_chunk_keys, noise, scale)
    bias = None  # the chunk summaries as keys and values of one fused call (no (B, H, N, C) logits)
    if not compat:
        nonempty = (
            seg.nonempty() if mask is None else Segments(seg.ids, seg.member & mask[:, None], seg.count).nonempty()
        )
        hidden = contained_chunks(seg, mask, window_size, e, grid) | ~nonempty[:, None, :]
        bias = key_mask_bias(~hidden, q.dtype)[:, None]
    global_out, global_lse = attention_with_lse(q, k_hat.to(q.dtype), beta.to(q.dtype), bias, scale)
    out, _ = merge_partials([local_out.to(q.dtype), global_out], [local_lse.to(global_lse.dtype), global_lse])
    out = out.to(q.dtype)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)
