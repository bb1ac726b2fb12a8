"""Dense fallback for short sequences: one masked fused-kernel call over all N x N pairs.

When the blocks a pattern visits cover most of the N x N matrix (short N, or windows as wide as the
sequence), running the whole matrix as one masked kernel call beats the block-sparse engine, whose
per-chunk work (gathers, masks, merges) then costs more than the skipped scores save. The mask is
the pattern's exact one (for a union of patterns, the additive ``log(multiplicity)`` of spec §10.2),
so results and gradients equal the sparse path's. It is bounded: ``auto`` takes it only when the
additive mask of the call stays under :data:`DENSE_BYTES` (so N is small), never an O(N^2) mask at
long N. The mask of each pattern (or union), causal or not, is built once and cached (at most
:data:`CACHE_BYTES` in all).

The same kernel, batched, runs patterns that are dense inside disjoint groups (a pattern's ``groups``:
butterfly stages, blockwise windows without extension) on a view of the sequence:
:func:`grouped_attention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.sparse.kernels import Kernel, pick_kernel
from attnzoo.sparse.layout import SparsePattern
from attnzoo.sparse.threads import one_thread_backward
from attnzoo.sparse.trace import note_path, note_scores

__all__ = [
    "DENSE_BYTES",
    "DENSE_SHARE",
    "attention_with_lse",
    "dense_attention",
    "fused_dense",
    "grouped_attention",
    "prefer_dense",
]

DENSE_BYTES = 32 * 2**20
"""Largest additive mask of one kernel call (``B|1 x Hp x N x N`` in the input's dtype, or ``B|1 x 1 x N x N`` when
heads with equal masks share one, see :func:`_head_groups`) the dense fallback may build: 8 heads
at N = 1024, where LongNet's default segments compute 1.31x softmax's scores sparsely (dense: 1.09x
softmax's time there, sparse 1.61x). Larger masks were measured too: at N = 2048 the 128 MiB mask made
the dense call swing between 1.1x and 2.3x softmax from call to call (fresh page mappings)."""

DENSE_SHARE = 0.6
"""``auto`` runs dense when the visited blocks hold at least this share of the N x N scores. Measured on
the 2-core CPU (fwd+bwd, 8 heads, d = 64, N = 512..2048): the masked dense call costs 1.04-1.10x softmax,
the sparse path 1.55-2.0x softmax per unit of share (window 256 at N = 1024: share 0.53, sparse 0.82x
softmax, dense 1.07x; share 0.62 at N = 512: sparse 1.06-1.22x, dense 1.04x)."""

CACHE_BYTES = 128 * 2**20
"""Most bytes the cached masks may hold together; the oldest go first."""

_CACHE: dict[tuple[object, ...], tuple[list[SparsePattern], Tensor | None, Tensor]] = {}
_UNMASKED: dict[tuple[Any, ...], tuple[list[SparsePattern], bool, bool]] = {}
"""Per pattern list, causality, dtype and device: whether :func:`fused_dense` may run it and whether it is plain
(causal) softmax (at most :data:`UNMASKED_ENTRIES`; the patterns are kept alive, so their ids stay theirs)."""
UNMASKED_ENTRIES = 256


def visited_share(patterns: Sequence[SparsePattern], *, lower: bool = False) -> float:
    """Scores the block-sparse engine computes (visited blocks x bs^2, summed over patterns, mean over
    pattern heads) as a share of the N x N matrix; ``lower``: only the blocks on and below the diagonal of
    patterns in token order (what a causal call computes)."""
    total = 0.0
    for p in patterns:
        layout = p.layout
        if lower and p.positions is None:
            visited = layout.to_dense().tril()  # (Hp, nB, nB): the causal share only where it is asked for
            total += float(visited.sum()) / visited.shape[0] * layout.block_size**2
        else:
            total += float(layout.kv_valid.sum()) / layout.kv_valid.shape[0] * layout.block_size**2
    n = patterns[0].seq_len
    return total / (n * n)


def prefer_dense(
    patterns: Sequence[SparsePattern], batch: int, padded: bool, itemsize: int, *, causal: bool = False
) -> bool:
    """Whether ``auto`` should run ``patterns`` as one dense masked call (see the module docstring).

    Causal, the kernel skips the key tiles above the diagonal (its causal flag with the bias), so the dense call
    does half the work: the rule compares the blocks visited on and below the diagonal with half the matrix
    (a causal window of 256 at N = 512 visits 0.44 of it: sparse it ran 2.0x causal softmax forward)."""
    heads, _ = _mask_heads(patterns, batch, padded, itemsize)
    n = patterns[0].seq_len
    mask_bytes = (batch if padded else 1) * heads * n * n * max(itemsize, 4)
    if mask_bytes > DENSE_BYTES:
        return False
    if causal:
        return visited_share(patterns, lower=True) >= DENSE_SHARE / 2
    return visited_share(patterns) >= DENSE_SHARE


def _mask_heads(
    patterns: Sequence[SparsePattern], batch: int, padded: bool, itemsize: int
) -> tuple[int, Tensor | None]:
    """Heads in one call's mask and the head groups: every pattern head in one call while its mask fits
    :data:`DENSE_BYTES` (a call per group costs more at short N: dilated at N = 256 measured 1.35x softmax
    grouped, 0.73-1.12x in one call),
    else one call per group of heads with equal masks, when there are such groups (:func:`_head_groups`)."""
    n = patterns[0].seq_len
    heads = max(p.slot_positions().shape[0] for p in patterns)
    if (batch if padded else 1) * heads * n * n * max(itemsize, 4) <= DENSE_BYTES:
        return heads, None
    group = _head_groups(patterns)
    return (heads, None) if group is None else (1, group)


def _head_groups(patterns: Sequence[SparsePattern]) -> Tensor | None:
    """``(Hp,)`` group of each pattern head, heads whose slot positions and visited blocks agree in every pattern
    sharing one (their masks are equal: LongNet's heads repeat their offsets every r heads), or None when that
    saves nothing (every head its own group, one head) or a ``mask_mod`` may tell heads apart."""
    if any(p.mask_mod is not None for p in patterns):
        return None
    heads = max(max(p.slot_positions().shape[0], p.layout.kv_indices.shape[0]) for p in patterns)
    if heads == 1:
        return None
    rows = torch.cat(
        [p.slot_positions().expand(heads, -1) for p in patterns]
        + [p.layout.to_dense().long().flatten(1).expand(heads, -1) for p in patterns],
        dim=1,
    )
    unique, group = torch.unique(rows, dim=0, return_inverse=True)
    return None if unique.shape[0] == heads else group


def _every_pair_once(patterns: Sequence[SparsePattern]) -> bool:
    """One pattern in token order whose visited blocks cover the N x N matrix with every pair allowed (then
    a causal call needs no mask: the kernel's causal flag skips the upper triangle)."""
    if len(patterns) != 1 or patterns[0].positions is not None:
        return False
    p = patterns[0]
    return bool(p.layout.to_dense().all()) and bool(p.full_entries()[p.layout.kv_valid].all())


def _multiplicity(
    patterns: Sequence[SparsePattern], causal: bool, dtype: torch.dtype, device: torch.device, group: Tensor | None
) -> tuple[Tensor | None, Tensor]:
    """``(Hp, N, N)`` ``log`` of how many patterns allow each pair (``-inf`` for none), or ``None`` when
    every pair is allowed exactly once (plain softmax), and ``(Hp, N)`` rows with a key. ``causal``
    drops the pairs with key after query. Cached per pattern list, causality, dtype and device."""
    key = (*(id(p) for p in patterns), causal, dtype, device, group is not None)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit[1], hit[2]
    count = patterns[0].to_dense(causal=causal).to(torch.uint8 if len(patterns) < 256 else torch.int32)
    for p in patterns[1:]:
        count = count + p.to_dense(causal=causal)  # broadcasts over pattern heads
    if group is not None:  # one mask per group of equal heads (its first head's)
        first = torch.full((int(group.max()) + 1,), count.shape[0], dtype=torch.long)
        first = first.scatter_reduce(0, group, torch.arange(len(group)), "amin")
        count = count[first]
    rows = (count > 0).any(-1).to(device)
    bias = None if bool((count == 1).all()) else count.to(device, dtype).log_()
    size = _bytes(bias)
    while _CACHE and size + sum(_bytes(entry[1]) for entry in _CACHE.values()) > CACHE_BYTES:
        _CACHE.pop(next(iter(_CACHE)))
    if size <= CACHE_BYTES:
        _CACHE[key] = (list(patterns), bias, rows)  # the patterns are kept alive, so their ids stay theirs
    return bias, rows


def _bytes(bias: Tensor | None) -> int:
    return 0 if bias is None else bias.numel() * bias.element_size()


class _Dense(torch.autograd.Function):
    """One kernel call with a dense additive mask (or none), and the kernel's causal flag when causal (the bias
    then holds the causal mask too; the flag only lets the kernel skip tiles); rows without keys give 0 and
    ``lse = -inf``. With ``group`` (``(H,)``, each head's row of a ``(B|1, G, N, N)`` bias), one call
    per group of heads, results written into one output (the buffer its backward reads, as without groups)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None,
        has_key: Tensor,
        kernel: Kernel,
        scale: float,
        causal: bool,
        group: Tensor | None = None,
    ):
        if group is None:
            out, lse = kernel.forward(q, k, v, bias, causal, scale, None)
        else:
            out = q.new_empty(*q.shape[:3], v.shape[-1])
            lse = q.new_empty(q.shape[:3], dtype=torch.promote_types(q.dtype, torch.float32))
            for heads, bias_g in _groups(group, bias):
                part_out, part_lse = kernel.forward(*_heads(heads, q, k, v), bias_g, causal, scale, None)
                out[:, heads], lse[:, heads] = part_out, part_lse
        ctx.kernel, ctx.scale, ctx.causal, ctx.group = kernel, scale, causal, group
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, bias, has_key, out, lse)
        return out, lse.masked_fill(~has_key, float("-inf"))

    @staticmethod
    @one_thread_backward
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, bias, has_key, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        if dlse is not None:
            dlse = dlse.masked_fill(~has_key, 0.0)
        if ctx.group is None:
            dq, dk, dv = ctx.kernel.backward(dout, dlse, q, k, v, out, lse, bias, ctx.causal, ctx.scale, None)
            return dq, dk, dv, None, None, None, None, None, None
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for heads, bias_g in _groups(ctx.group, bias):
            part_dlse = None if dlse is None else dlse[:, heads]
            grads = ctx.kernel.backward(
                *_heads(heads, dout), part_dlse, *_heads(heads, q, k, v, out), lse[:, heads], bias_g, ctx.causal,
                ctx.scale, None,
            )  # fmt: skip
            for full, part in zip((dq, dk, dv), grads, strict=True):
                full[:, heads] = part
        return dq, dk, dv, None, None, None, None, None, None


def _groups(group: Tensor, bias: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
    """``(heads, bias)`` of each group: the heads' indices and the group's ``(B|1, 1, N, N)`` bias."""
    return [
        ((group == g).nonzero()[:, 0], None if bias is None else bias[:, g : g + 1])
        for g in range(int(group.max()) + 1)
    ]


def _heads(heads: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` at ``heads`` (dim 1), contiguous."""
    return tuple(t.index_select(1, heads) for t in tensors)


def fused_dense(
    q: Tensor, k: Tensor, v: Tensor, patterns: Sequence[SparsePattern], causal: bool, scale: float
) -> Tensor | None:
    """Short unpadded sequences as one call of the fused CPU kernel with PyTorch's own autograd (what SDPA runs
    for softmax), when the rule of :func:`prefer_dense` picks the dense path and every row sees a key; else None.

    The bias is the pattern's (or union's) ``log`` multiplicity, None where every pair counts once (a window
    covering the sequence costs exactly softmax), cached like :func:`dense_attention`'s; the decision is cached
    per pattern list, so a repeated call costs two dictionary lookups besides the kernel.

    Args:
        q, k, v: ``(B, H, N, d)`` on CPU, one dtype the fused kernel takes, equal widths; ``causal``: keys j <= i.

    Returns:
        ``(B, H, N, d)`` or None (the caller runs :func:`dense_attention` or the block-sparse plan).
    """
    key = (*(id(p) for p in patterns), causal, q.dtype, q.device)
    hit = _UNMASKED.get(key)
    if hit is None:
        hit = _UNMASKED[key] = (list(patterns), *_unmasked_plan(patterns, causal, q.dtype, q.device))
        if len(_UNMASKED) > UNMASKED_ENTRIES:
            _UNMASKED.pop(next(iter(_UNMASKED)))
    _, ok, plain = hit
    if not ok:
        return None
    bias, _ = _multiplicity(patterns, causal and not plain, q.dtype, q.device, None)
    if bias is not None:
        bias = bias[(None,) * (4 - bias.dim())]
    note_path("fused-dense")
    note_scores(q.shape[:-2].numel(), q.shape[-2], k.shape[-2], causal)
    if causal and bias is not None:  # SDPA refuses a mask beside is_causal; the kernel takes both and skips j > i
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, True, attn_mask=bias, scale=scale
        )
        return out
    # the same fused kernel through SDPA, with less Python than the aten op
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, scale=scale)


def _unmasked_plan(
    patterns: Sequence[SparsePattern], causal: bool, dtype: torch.dtype, device: torch.device
) -> tuple[bool, bool]:
    """``(ok, plain)`` for :func:`fused_dense`: the rule picks dense, one call holds every head's mask and every
    row sees a key; ``plain`` when causal softmax over every pair j <= i needs no bias (the kernel's flag does it)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    dense = prefer_dense(patterns, 1, False, itemsize, causal=causal)
    if not dense or _mask_heads(patterns, 1, False, itemsize)[1] is not None:
        return False, False
    plain = causal and _causal_pairs_once(patterns)
    _, rows = _multiplicity(patterns, causal and not plain, dtype, device, None)
    return bool(rows.all()), plain


def _causal_pairs_once(patterns: Sequence[SparsePattern]) -> bool:
    """Every pair with key j <= query i allowed by exactly one pattern: causal softmax with no bias (the kernel's
    causal flag drops the rest), e.g. a causal window as long as the sequence (which visits no upper block).
    O(N^2) once per pattern list (the caller caches it)."""
    n = patterns[0].seq_len
    count = sum(p.to_dense(causal=True).to(torch.int32) for p in patterns)
    return bool((count == torch.ones(n, n, dtype=torch.int32).tril()).all())


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    patterns: Sequence[SparsePattern],
    mask: Tensor | None,
    causal: bool,
    scale: float,
    kernel: Kernel,
) -> tuple[Tensor, Tensor]:
    """The union of ``patterns`` as one dense masked call: ``softmax(s QK^T + log M) V`` and its lse.

    Args:
        q, k, v: ``(B, H, N, d)``; ``mask``: ``(B, N)`` bool or None; ``causal``: keys j <= i only.

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``, 0 and ``-inf`` on rows without keys.
    """
    b, h, n = q.shape[:3]
    plain = causal and mask is None and _every_pair_once(patterns)  # plain causal softmax: no bias at all
    _, group = _mask_heads(patterns, b, mask is not None, q.element_size())
    bias, rows = _multiplicity(patterns, causal and not plain, q.dtype, q.device, group)
    if mask is not None:
        bias = torch.zeros(n, n, dtype=q.dtype, device=q.device) if bias is None else bias
        bias = bias.masked_fill(~mask[:, None, None, :], float("-inf"))
        rows = torch.isfinite(bias).any(-1)
    bias = None if bias is None else bias[(None,) * (4 - bias.dim())]  # (B|1, Hp|G|1, N, N)
    if group is not None:  # the masks of heads in one group are equal: one (B|1, 1, N, N) bias per group
        group = group.to(q.device)
        rows = rows.expand(b, -1, n).index_select(1, group)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    # causal: the kernel's flag as well as the bias, so that it skips the key tiles above the diagonal
    return _Dense.apply(q, k, v, bias, rows.expand(b, h, n), kernel, scale, causal, group)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """``softmax(s q k^T + bias) v`` and its log-sum-exp in one fused kernel call, differentiable through both
    (for attention parts merged by log-sum-exp, without an ``N x S`` score tensor).

    Args:
        q: ``(B, H, N, d)``; k: ``(B, H, S, d)``; v: ``(B, H, S, dv)``; bias: additive, broadcastable to
            ``(B, H, N, S)`` (``-inf`` = masked), or None; scale: s.

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``, 0 and ``-inf`` on rows whose keys are all masked.
    """
    b, h, n = q.shape[:3]
    if k.shape[-2] == 0:  # no key at all (the fused CPU kernel would divide by zero)
        return q.new_zeros(b, h, n, v.shape[-1]), q.new_full((b, h, n), float("-inf"))
    kernel = pick_kernel(q.device, q.dtype, equal_widths=q.shape[-1] == v.shape[-1])
    has_key = q.new_ones((), dtype=torch.bool) if bias is None else torch.isfinite(bias).any(-1)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _Dense.apply(q, k, v, bias, has_key.expand(b, h, n), kernel, scale, False)


GROUP_CHUNK_BYTES = 2 * 2**20
"""Groups per kernel call in :func:`grouped_attention`: as many as keep one chunk of q under this size.
One call over all groups (32 MiB tensors at N = 16384, 8 heads, d = 64) ran 1.6-1.8x slower per group
than calls over 2 MiB chunks in its backward (the kernel's buffers stop fitting in cache)."""


class _Grouped(torch.autograd.Function):
    """Softmax attention over ``(1, R, b, d)`` rows of groups, by chunks of rows, with an optional additive
    key bias ``(1, R, 1, b)``; returns ``(out, lse)``, 0 and ``-inf`` on rows whose keys are all masked."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, kernel: Kernel, scale: float, causal: bool
    ):
        ctx.kernel, ctx.scale, ctx.causal = kernel, scale, causal
        ctx.set_materialize_grads(False)
        parts = [
            kernel.forward(q[:, c], k[:, c], v[:, c], None if bias is None else bias[:, c], causal, scale, None)
            for c in _row_chunks(q)
        ]
        out, lse = (
            parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
        )
        ctx.save_for_backward(q, k, v, bias, out, lse)
        if bias is None:
            return out, lse
        return out, lse.masked_fill(torch.isneginf(bias).all(-1), float("-inf"))  # groups of padding only

    @staticmethod
    @one_thread_backward
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, bias, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        if dlse is not None and bias is not None:
            dlse = dlse.masked_fill(torch.isneginf(bias).all(-1), 0.0)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for c in _row_chunks(q):
            grads = ctx.kernel.backward(
                dout[:, c], None if dlse is None else dlse[:, c], q[:, c], k[:, c], v[:, c], out[:, c], lse[:, c],
                None if bias is None else bias[:, c], ctx.causal, ctx.scale, None,
            )  # fmt: skip
            for full, part in zip((dq, dk, dv), grads, strict=True):
                full[:, c] = part
        return dq, dk, dv, None, None, None, None


def _row_chunks(x: Tensor) -> list[slice]:
    """Slices of dim 1 of ``(1, R, b, d)`` holding at most :data:`GROUP_CHUNK_BYTES` each (at least one row)."""
    per_row = x[0, 0].numel() * x.element_size()
    step = max(1, GROUP_CHUNK_BYTES // max(per_row, 1))
    return [slice(i, i + step) for i in range(0, x.shape[1], step)]


def grouped_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    groups: tuple[int, int],
    causal: bool,
    scale: float,
    kernel: Kernel,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax inside groups of b tokens at stride s (a pattern's ``groups``) as batched kernel calls.

    Group (g, r) is tokens ``g b s + r + j s`` (j = 0 .. b-1): the ``(G, b, s) -> (G, s, b)`` transpose of
    the sequence, a view for s = 1 (no copy, no gather) and one strided copy otherwise.

    Args:
        q, k, v: ``(B, H, N, d)`` with ``N = G b s``; ``causal``: keys j <= i inside each group.
        mask: bool padding mask ``(B, N)``, True = real token (not with ``causal``: the kernel takes one or
            the other); padded keys are skipped, a group without real keys gives 0 and ``-inf``.

    Returns:
        ``(out (B, H, N, dv), lse (B, H, N))``.
    """
    b, s = groups
    batch, heads, n = q.shape[:3]
    g = n // (b * s)

    def to_groups(x: Tensor) -> Tensor:
        return x.reshape(batch, heads, g, b, s, x.shape[-1]).transpose(3, 4).reshape(1, -1, b, x.shape[-1])

    def to_tokens(x: Tensor) -> Tensor:
        return x.reshape(batch, heads, g, s, b, x.shape[-1]).transpose(3, 4).reshape(batch, heads, n, x.shape[-1])

    if causal and mask is not None:
        raise ValueError("grouped_attention takes a padding mask or causal, not both")
    qg, kg, vg = (to_groups(x).contiguous() for x in (q, k, v))
    if qg.shape[1] == 0:
        return v * 0, q.new_full(q.shape[:-1], float("-inf"))
    bias = None
    if mask is not None:
        keys = to_groups(mask[:, None, :, None].expand(batch, heads, n, 1))  # (1, R, b, 1)
        bias = torch.zeros(keys.shape, dtype=q.dtype, device=q.device).masked_fill_(~keys, float("-inf"))
        bias = bias.transpose(-1, -2)  # (1, R, 1, b): the same keys for every query of a group
    out, lse = _Grouped.apply(qg, kg, vg, bias, kernel, scale, causal)
    return to_tokens(out), to_tokens(lse[..., None])[..., 0]
