"""Token-by-token decoding of causal EVA: the next query's exact local keys plus the completed chunks' summaries.

Query p (block ``t = p // w``) sees the real keys ``[t w - e, p]`` exactly and, in the same softmax, every
completed chunk c with ``(c + 1) r <= t w - e`` that holds a real token (``compat``: ``(c + 1) r <= (p // r) r``,
the official rule). A chunk's summary (``k_hat_c``, ``beta_c``) is computed once, when its last token
arrives, by the forward's own :func:`~attnzoo.ops.eva.sparse.chunk_summaries` on that chunk's r tokens
(they lie inside the current block, so its keys and values are still cached; its queries are kept
until then). State O(w + e + N / r); a step costs O((w + e + N / r) d) per head, like one row of the
forward. Deterministic (eval) only: training draws chunk samples and drops attention probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.eva.causal import causal_t5_bias, real_chunks
from attnzoo.ops.eva.sparse import ChunkKeys, chunk_summaries
from attnzoo.ops.lara.segments import strided_segments

__all__ = ["ChunkState", "EvaDecoding", "chunk_state", "chunk_step"]


@dataclass(frozen=True)
class EvaDecoding:
    """What a causal EVA module decodes with: window w, left extension e, chunk size r (divides w),
    ``compat`` (official quirks), scale s, the T5 table ``(num_buckets, 1)`` or None, the chunk-key maps."""

    window: int
    extension: int
    chunk: int
    compat: bool
    scale: float
    t5_table: Tensor | None
    chunk_keys: ChunkKeys


@dataclass
class ChunkState(DecodeState):
    """Causal EVA's decoding state after ``length`` tokens.

    Attributes:
        k, v: ``(B, H, L, d)`` the tokens ``[length - L, length)`` the next query's block can see
            (``L <= w - 1 + e``); real: ``(B, L)`` bool, False = prompt padding.
        q: ``(B, H, P, d)`` queries of the chunk in progress (``P = length % r``).
        k_hat, beta: ``(B, H, C, d)`` keys and values of the ``C = length // r`` completed chunks.
        seen: ``(B, C)`` bool, the chunk may be attended (it holds a real token; always under compat).
    """

    k: Tensor
    v: Tensor
    real: Tensor
    q: Tensor
    k_hat: Tensor
    beta: Tensor
    seen: Tensor


def _summaries(q: Tensor, k: Tensor, v: Tensor, real: Tensor, cfg: EvaDecoding) -> tuple[Tensor, Tensor, Tensor]:
    """``k_hat, beta: (B, H, C, d)`` and ``seen: (B, C)`` of the whole chunks tiling ``q, k, v: (B, H, C r, d)``."""
    b, h, n, d = q.shape
    if n == 0:
        return q.new_zeros(b, h, 0, d), v.new_zeros(b, h, 0, v.shape[-1]), real.new_zeros(b, 0)
    seg = strided_segments(n, cfg.chunk, 0, b, q.device, padded_len=n, count_slots=cfg.compat)
    k_hat, beta = chunk_summaries(q, k, v, seg, real, cfg.chunk_keys, None, cfg.scale)
    seen = real.new_ones(b, n // cfg.chunk) if cfg.compat else real_chunks(seg, real)
    return k_hat, beta, seen


def _trimmed(k: Tensor, v: Tensor, real: Tensor, length: int, cfg: EvaDecoding) -> tuple[Tensor, Tensor, Tensor]:
    """The last tokens of ``k, v: (B, H, L, d)``, ``real: (B, L)`` (ending at position ``length - 1``) that the
    query at ``length`` can see: from its block's start minus e."""
    start = k.shape[2] - length + max(0, length // cfg.window * cfg.window - cfg.extension)
    return k[:, :, start:], v[:, :, start:], real[:, start:]


def chunk_state(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, cfg: EvaDecoding) -> ChunkState:
    """The state after a prompt ``q, k, v: (B, H, T, d)`` with padding ``mask: (B, T) | None``."""
    b, _, t, _ = q.shape
    real = torch.ones(b, t, dtype=torch.bool, device=q.device) if mask is None else mask
    done = t // cfg.chunk * cfg.chunk
    k_hat, beta, seen = _summaries(q[:, :, :done], k[:, :, :done], v[:, :, :done], real[:, :done], cfg)
    kept = (x.clone() for x in _trimmed(k, v, real, t, cfg))
    return ChunkState(t, *kept, q[:, :, done:].clone(), k_hat, beta, seen)


def chunk_step(q: Tensor, k: Tensor, v: Tensor, state: ChunkState, cfg: EvaDecoding) -> tuple[Tensor, ChunkState]:
    """One real token ``q, k, v: (B, H, 1, d)`` at position ``state.length`` -> ``(B, H, 1, d)`` and the new state.

    One softmax over the cached local keys (plus the T5 bias) and the visible chunks, in fp32 at least.
    """
    p, w, r, s = state.length, cfg.window, cfg.chunk, cfg.scale
    keys, values = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
    real = torch.cat([state.real, state.real.new_ones(q.shape[0], 1)], 1)
    work = torch.promote_types(q.dtype, torch.float32)
    qw = q.to(work)
    local = s * (qw @ keys.to(work).transpose(-1, -2))  # (B, H, 1, L)
    if cfg.t5_table is not None:
        pos = torch.arange(p + 1 - keys.shape[2], p + 1, device=q.device)
        shift = cfg.extension if cfg.compat else 0
        bias = causal_t5_bias(cfg.t5_table, w, cfg.extension, s, shift)
        local = local + bias(None, torch.tensor(p, device=q.device), pos).to(work)
    local = local.masked_fill(~real[:, None, None, :], float("-inf"))
    limit = p // r * r if cfg.compat else p // w * w - cfg.extension
    ends = (torch.arange(state.k_hat.shape[2], device=q.device) + 1) * r
    visible = state.seen & (ends <= limit)[None]  # (B, C)
    chunks = (s * (qw @ state.k_hat.to(work).transpose(-1, -2))).masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(torch.cat([local, chunks], -1), dim=-1)
    split = keys.shape[2]
    out = probs[..., :split] @ values.to(work) + probs[..., split:] @ state.beta.to(work)
    queries, k_hat, beta, seen = torch.cat([state.q, q], 2), state.k_hat, state.beta, state.seen
    if (p + 1) % r == 0:  # the token completes chunk p // r: summarise it as the forward does
        new_k_hat, new_beta, new_seen = _summaries(queries, keys[:, :, -r:], values[:, :, -r:], real[:, -r:], cfg)
        k_hat, beta, seen = (
            torch.cat([k_hat, new_k_hat], 2),
            torch.cat([beta, new_beta], 2),
            torch.cat([seen, new_seen], 1),
        )
        queries = queries[:, :, :0]
    keys, values, real = _trimmed(keys, values, real, p + 1, cfg)
    return out.to(q.dtype), ChunkState(p + 1, keys, values, real, queries, k_hat, beta, seen)
