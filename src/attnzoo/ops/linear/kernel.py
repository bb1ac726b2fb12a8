"""The one engine for feature-map ("kernelized") linear attention, shared by ``linear`` and ``performer``.

Given feature maps phi_q, phi_k (positive, ``m`` features) it computes

    y_i = sum_j phi_q(q_i) . phi_k(k_j) v_j / sum_j phi_q(q_i) . phi_k(k_j)

over the keys j that row i may see (real keys; j <= i when causal), in O(N*m*dv) time and without
an N x S matrix. Work goes chunk by chunk (``chunk_size`` tokens) so no temporary grows with N:

* non-causal: per key chunk ``sum_j phi_k(k_j) v_j^T`` (m x dv) and ``sum_j phi_k(k_j)`` (m), then per
  query chunk a matmul with them;
* causal: chunked prefix sums -- a running (m x dv) state carried from chunk to chunk plus the exact
  lower-triangular (C x C) term inside each chunk; memory O(N*m*dv / C) for the saved states.

Key features may come with a log scale (the detached stabiliser of an exponential map), one per chunk
or one per key: the true features are ``features * exp(log_scale)``. The engine rescales chunk sums to
one common frame (the max over chunks, per (batch, head) or over the whole batch), so exponentials never
overflow and the result does not depend on the stabiliser -- except through ``eps``, a constant added to
every real key feature after stabilisation (the official Performer codes' ``+1e-4``), which is therefore
refused with ``causal``. Causal rows use frames of their own: row i's is the running max of the log
scales of the keys j <= i (and of the chunks before), so with per-key scales no later key takes part in
row i's arithmetic, not even through underflow (a chunk-wide scale would let a dominant later key flush
the features of earlier keys to 0). With ``normalize``, each causal row's query features are also scaled by a
detached factor (:func:`_row_stabiliser`) that makes the largest term of its normaliser 1: the output, a
ratio, is unchanged, but the normaliser no longer falls to fp32's ``tiny`` when the largest query and key
features sit on different features (large logits), where ``num / den``'s backward overflowed into NaN.

Decoding: :func:`causal_feature_sums` absorbs a prompt into the running sums (same chunks and frames as
the causal forward) and :func:`causal_feature_step` runs the causal forward's arithmetic on a chunk of
one new token, O(m dv) per (batch, head) and token, whatever the context length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "FeatureFn",
    "FeatureSums",
    "causal_feature_step",
    "causal_feature_sums",
    "chunk_length",
    "empty_sums",
    "feature_attention",
]

# (x chunk (B, H, C, d), mask chunk (B, C) | None) -> (features (B, H, C, m), log scale | None), the log scale
# (B, H, 1, 1) for the chunk or (B, H, C, 1) per key (-inf where no real key)
FeatureFn = Callable[[Tensor, "Tensor | None"], "tuple[Tensor, Tensor | None]"]

# Causal running sums: (sum phi(k) v^T (B, H, m, dv), sum phi(k) (B, H, m), log frame (B, H, 1, 1) | None).
# The true sums are the stored ones times exp(frame); frame is -inf until a real key arrives and None for
# feature maps without a log scale.
FeatureSums = tuple[Tensor, Tensor, "Tensor | None"]

_CHUNK_BYTES = 16 * 2**20  # keep every (B, H, C, m) temporary well under glibc's 32 MiB mmap threshold
CAUSAL_CHUNK = 128  # tokens per causal chunk: the (C x C) intra-chunk term costs O(N*C*(m + dv))
_ROW_SHIFT_CAP = 60.0  # largest log of a causal row's query-feature factor (e^60 ~ 1e26, far below fp32's 3e38)


def chunk_length(batch_heads: int, width: int, length: int, *, causal: bool) -> int:
    """Tokens per chunk: ``CAUSAL_CHUNK`` when causal, else as many as fit ``_CHUNK_BYTES`` of fp32 features."""
    if causal:
        return max(1, min(CAUSAL_CHUNK, length))
    return max(1, min(length, _CHUNK_BYTES // (4 * max(batch_heads, 1) * max(width, 1))))


def _frame(log_scales: Tensor, global_frame: bool) -> Tensor:
    """The common frame: max over chunks (dim 0) [and over batch and heads]; ``-inf`` (no real key) -> 0."""
    frame = log_scales.amax(0)
    if global_frame:
        frame = frame.amax(dim=(0, 1), keepdim=True)
    return frame.masked_fill(frame == float("-inf"), 0.0)


def _divide(num: Tensor, den: Tensor, normalize: bool, min_denominator: float) -> Tensor:
    if not normalize:
        return num
    return num / den.clamp_min(max(min_denominator, torch.finfo(den.dtype).tiny))[..., None]


def feature_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    query_features: Callable[[Tensor], Tensor],
    key_features: FeatureFn,
    mask: Tensor | None = None,
    causal: bool = False,
    normalize: bool = True,
    eps: float = 0.0,
    global_frame: bool = False,
    min_denominator: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Linear attention with arbitrary positive feature maps, chunked (see the module docstring).

    Args:
        q: ``(B, H, N, d)``; k: ``(B, H, S, d)``; v: ``(B, H, S, dv)``, all of one dtype. Computed in
            fp32 at least (fp32 accumulation of the normaliser for bf16/fp16 inputs), returned in q's dtype.
        query_features: ``(B, H, C, d) -> (B, H, C, m)``.
        key_features: ``(k chunk, mask chunk | None) -> (features, log_scale | None)``; features must be 0
            at masked keys; ``log_scale`` ``(B, H, 1, 1)`` per chunk (``-inf`` for a chunk without real keys)
            or, causal only, ``(B, H, C, 1)`` per key (``-inf`` at masked keys): then rows never depend on
            later keys.
        mask: ``(B, S)`` bool, True = real key (only used for ``eps`` and handed to ``key_features``).
        causal: row i uses keys j <= i (needs N == S).
        normalize: divide by the normaliser (False: the un-normalised sum, as the LRA "linear" code).
        eps: added to every real key feature (after stabilisation).
        global_frame: one stabiliser frame over the whole batch (the LRA Performer) instead of per (b, h).
        min_denominator: clamp of the normaliser (efficient-attention's 1e-2); 0 = only avoid 0/0, so a
            row without any visible key gives 0.
        chunk_size: tokens per chunk (default: :func:`chunk_length`).

    Returns:
        ``(B, H, N, dv)``.
    """
    if causal and eps:
        raise ValueError("feature eps > 0 cannot be causal: it makes row i depend on later keys via the stabiliser")
    out_dtype = q.dtype
    work = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(work), k.to(work), v.to(work)
    b, h, n, _ = q.shape
    if not (b and h and n and k.shape[-2]):  # empty: nothing to attend (rows without keys are 0)
        return ((q @ k.transpose(-1, -2)) @ v).to(out_dtype)
    chunk = chunk_size or chunk_length(b * h, max(v.shape[-1], q.shape[-1]), max(n, k.shape[-2]), causal=causal)
    if causal:
        out, _ = _causal(q, k, v, query_features, key_features, mask, normalize, min_denominator, chunk)
    else:
        out = _parallel(
            q, k, v, query_features, key_features, mask, normalize, eps, global_frame, min_denominator, chunk
        )
    return out.to(out_dtype)


def _parallel(q, k, v, query_features, key_features, mask, normalize, eps, global_frame, min_den, chunk):
    """Non-causal rows. The normaliser rides along the values as an extra all-ones column, so each key
    chunk is one GEMM ``[v, 1]^T phi_k`` ``(B, H, dv + 1, m)`` and each query chunk one GEMM back: no
    separate feature sums, no ``(C, 1) x (1, m)`` outer product in the backward, and every gradient of a
    ``(B, H, C, m)`` feature tensor comes out contiguous (the (m, dv) orientation transposed it)."""
    dv = v.shape[-1]
    sums, scales = [], []
    for _, kc, vc, mc in _chunks(k, k, v, mask, chunk):  # (keys only; q may have another length)
        feats, log_scale = key_features(kc, mc)
        with_ones = torch.cat([vc, vc.new_ones(*vc.shape[:-1], 1)], dim=-1)  # (B, H, C, dv + 1)
        sums.append(with_ones.transpose(-1, -2) @ feats)  # (B, H, dv + 1, m): [sum_j v_j phi_j ; sum_j phi_j]
        scales.append(log_scale)
    vz = torch.stack(sums)
    if scales[0] is not None:
        log_scales = torch.stack(scales)  # (T, B, H, 1, 1)
        vz = (vz * torch.exp(log_scales - _frame(log_scales, global_frame))).sum(0)
    else:
        vz = vz.sum(0)
    if eps:
        real_v = v if mask is None else v * mask[:, None, :, None].to(v.dtype)
        count = v.new_full(v.shape[:1], k.shape[-2]) if mask is None else mask.sum(-1).to(v.dtype)  # (B,)
        extra = torch.cat([real_v.sum(-2), count[:, None, None].expand(-1, v.shape[1], 1)], dim=-1)
        vz = vz + eps * extra[..., None]  # eps added to every real key's features
    outs = []
    for fq in map(query_features, q.split(chunk, -2)):
        both = fq @ vz.transpose(-1, -2)  # (B, H, C, dv + 1)
        outs.append(_divide(both[..., :dv], both[..., dv], normalize, min_den))
    return torch.cat(outs, dim=-2)


def empty_sums(
    b: int, h: int, width: int, dv: int, *, scaled: bool, dtype: torch.dtype, device: torch.device
) -> FeatureSums:
    """Causal sums before any key: zeros, and frame ``-inf`` (``scaled``: the key map has a log scale) or None."""
    frame = torch.full((b, h, 1, 1), float("-inf"), dtype=dtype, device=device) if scaled else None
    return (
        torch.zeros(b, h, width, dv, dtype=dtype, device=device),
        torch.zeros(b, h, width, dtype=dtype, device=device),
        frame,
    )


def _rescale(sums: FeatureSums, fk: Tensor, log_scale: Tensor | None) -> tuple[FeatureSums, Tensor]:
    """The running sums and a chunk's key features ``fk`` in the common frame ``max(frame, log_scale)``
    (``log_scale`` ``(B, H, 1, 1)`` or per key ``(B, H, C, 1)``)."""
    kv, z, frame = sums
    if log_scale is None:
        return sums, fk
    raw = torch.maximum(frame, log_scale.amax(-2, keepdim=True))
    new = raw.masked_fill(raw == float("-inf"), 0.0)  # no real key yet: the sums are 0 in any frame
    decay = torch.exp(frame - new)
    return (kv * decay, z * decay[..., 0], raw), fk * torch.exp(log_scale - new)


def _add(sums: FeatureSums, fk: Tensor, v: Tensor) -> FeatureSums:
    """The sums with keys ``fk: (B, H, C, m)`` (already in the sums' frame) and values ``v: (B, H, C, dv)`` added."""
    kv, z, frame = sums
    return kv + fk.transpose(-1, -2) @ v, z + fk.sum(-2), frame


def _chunks(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, chunk: int) -> zip:
    """``(q, k, v, mask)`` chunks of ``chunk`` tokens, by ``split``: its backward concatenates the chunks'
    gradients once, where slicing in a loop would materialise a full-size zero gradient per chunk (O(N^2 / C))."""
    masks = [None] * len(range(0, q.shape[-2], chunk)) if mask is None else mask.split(chunk, -1)
    return zip(q.split(chunk, -2), k.split(chunk, -2), v.split(chunk, -2), masks, strict=True)


def _row_frames(frame: Tensor, log_scale: Tensor, tril: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row frames of a causal chunk: row i's frame ``M_i`` is the max of the running ``frame`` and the log
    scales of keys ``j <= i``. Returns ``exp(frame - M_i)`` ``(B, H, C, 1)`` (the earlier sums' factor),
    ``exp(c_j - M_i)`` ``(B, H, C, C)``, 0 for ``j > i`` (the chunk's keys' factors: no later key enters row i),
    and ``M_i`` ``(B, H, C, 1)`` (0 where no real key yet)."""
    per_key = log_scale.expand(*log_scale.shape[:2], tril.shape[0], 1)
    rows = torch.maximum(frame, per_key.cummax(-2).values)
    rows = rows.masked_fill(rows == float("-inf"), 0.0)
    pair = (per_key.transpose(-1, -2) - rows).masked_fill(~tril, float("-inf"))
    return torch.exp(frame - rows), torch.exp(pair), rows


@torch.no_grad()
def _row_stabiliser(fq: Tensor, fk: Tensor, log_scale: Tensor, z: Tensor, frame: Tensor, rows: Tensor) -> Tensor:
    """Per-row factor ``exp(-t_i)`` ``(B, H, C, 1)`` (detached) for the query features of a causal chunk.

    ``t_i = max_f (log fq_if + max_{j <= i} log fk_jf)`` in row i's frame ``rows`` (``M_i``), the earlier keys
    bounded by their feature sums ``z`` (frame ``frame``): the log of the largest single term of row i's
    normaliser, computed in log space so it neither underflows nor depends on later keys. With it the
    normaliser lies in ``[1, (i + 1) m]`` (while the cap does not bind) instead of falling to fp32's ``tiny``
    for large logits (then ``num / den``'s backward overflows). The output is unchanged: it is a ratio,
    invariant to a per-row factor. The factor is capped at ``exp(_ROW_SHIFT_CAP)`` (features and their
    gradients stay finite) and is 1 for rows without a visible key.
    """
    keys = (fk.log() + log_scale).cummax(-2).values  # (B, H, C, m): log of the largest feature of keys j <= i
    past = z.log()[..., None, :] + frame  # (B, H, 1, m): earlier keys, bounded by their sums
    top = (fq.log() + torch.maximum(keys, past) - rows).amax(-1, keepdim=True)
    return torch.exp((-top).clamp(max=_ROW_SHIFT_CAP)).masked_fill(top == float("-inf"), 1.0)


def _causal(q, k, v, query_features, key_features, mask, normalize, min_den, chunk, sums=None):
    """Chunked causal prefix sums from ``sums`` (None: no earlier key); returns the output and the final sums."""
    tril, outs = None, []
    for qc, kc, vc, mc in _chunks(q, k, v, mask, chunk):
        fq = query_features(qc)
        fk, log_scale = key_features(kc, mc)
        size = qc.shape[-2]
        if tril is None or tril.shape[0] != size:
            tril = torch.ones(size, size, dtype=torch.bool, device=q.device).tril_()
        if sums is None:
            b, h, _, m = fk.shape
            sums = empty_sums(b, h, m, v.shape[-1], scaled=log_scale is not None, dtype=fk.dtype, device=fk.device)
        kv, z, frame = sums
        framed = log_scale is not None and frame is not None
        if framed:  # each row in its own frame: the keys it may see
            carry, pair, rows = _row_frames(frame, log_scale, tril)
            if normalize:  # each row scaled so its normaliser is >= 1 (a ratio: the output does not change)
                fq = fq * _row_stabiliser(fq, fk, log_scale, z, frame, rows)
        scores = fq @ fk.transpose(-1, -2)  # (B, H, C, C)
        past_num, past_den = fq @ kv, (fq @ z[..., None])[..., 0]
        if framed:
            scores = scores * pair
            past_num, past_den = past_num * carry, past_den * carry[..., 0]
        else:
            scores = scores.masked_fill(~tril, 0.0)
        num, den = scores @ vc + past_num, scores.sum(-1) + past_den
        sums = _add(*_rescale(sums, fk, log_scale), vc)
        outs.append(_divide(num, den, normalize, min_den))
    return torch.cat(outs, dim=-2), sums


def causal_feature_sums(
    k: Tensor, v: Tensor, *, key_features: FeatureFn, mask: Tensor | None, sums: FeatureSums
) -> FeatureSums:
    """The causal sums after keys ``k: (B, H, T, d)`` and values ``v: (B, H, T, dv)`` (a prompt) on top of ``sums``.

    Chunked as the causal forward (:data:`CAUSAL_CHUNK` tokens, same stabiliser frames); ``mask: (B, T)``
    bool, True = real key. Computed in the sums' dtype (fp32 at least).
    """
    work = sums[0].dtype
    k, v = k.to(work), v.to(work)
    chunk = chunk_length(1, 1, k.shape[-2], causal=True)
    for start in range(0, k.shape[-2], chunk):
        stop = start + chunk
        fk, log_scale = key_features(k[:, :, start:stop], None if mask is None else mask[:, start:stop])
        sums, fk = _rescale(sums, fk, log_scale)
        sums = _add(sums, fk, v[:, :, start:stop])
    return sums


def causal_feature_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    query_features: Callable[[Tensor], Tensor],
    key_features: FeatureFn,
    sums: FeatureSums,
    normalize: bool = True,
) -> tuple[Tensor, FeatureSums]:
    """One decoding step of causal :func:`feature_attention`: the new real token attends itself and ``sums``.

    Args:
        q, k: ``(B, H, 1, d)``; v: ``(B, H, 1, dv)`` of the new token.
        sums: the causal sums of every earlier token (:func:`causal_feature_sums`, :func:`empty_sums`).
        normalize: as :func:`feature_attention`.

    Returns:
        ``(B, H, 1, dv)`` in q's dtype (computed in the sums' dtype) and the sums including the token.
        O(m dv) per (batch, head): the same arithmetic as one causal chunk of one token.
    """
    work = sums[0].dtype
    out, sums = _causal(q.to(work), k.to(work), v.to(work), query_features, key_features, None, normalize, 0.0, 1, sums)
    return out.to(q.dtype), sums
