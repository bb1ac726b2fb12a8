"""Reformer LSH attention through the sparse engine: hash, sort by bucket, chunked attention."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, zero_masked_rows
from attnzoo.ops.reformer.hashing import hash_buckets, lsh_plan, normalise_keys, plan_lengths, rotation_shape
from attnzoo.sparse import sparse_attention
from attnzoo.sparse.structured import lsh_chunks

__all__ = ["draw_rotations", "reformer_attention", "sorted_order"]


def draw_rotations(
    heads: int, d: int, rounds: int, factors: tuple[int, ...], seed: int | None, device: torch.device
) -> Tensor:
    """Gaussian rotations ``(H, d, R, sum(factors) / 2)``: from ``torch.Generator().manual_seed(seed)``
    (HF with ``hash_seed=seed`` on the CPU), or a fresh draw from the global RNG when ``seed`` is None
    (the official code: new rotations every forward)."""
    shape = rotation_shape(heads, d, rounds, factors)
    if seed is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def sorted_order(buckets: Tensor, real: Tensor, num_buckets: int, *, pad_slots: bool) -> tuple[Tensor, Tensor]:
    """Slot order of the virtual tokens ``r * N + i``, sorted by (round, bucket, position).

    Args:
        buckets: ``(B, H, R, N)``.
        real: ``(B, N)`` bool, real tokens.
        pad_slots: padding keeps its slots, in an extra last bucket of each round (HF) as empty
            slots; otherwise padding is left out and every real token moves up.

    Returns:
        ``order (B, H, R*N)`` (-1 = empty slot) and ``lengths (B,)``: slots that count (non-empty
        ones, or all with ``pad_slots``).
    """
    b, h, rounds, n = buckets.shape
    pad = ~real[:, None, None, :]
    key = buckets.masked_fill(pad, num_buckets)
    rank = torch.arange(rounds, device=buckets.device)[:, None] * (num_buckets + 1) + key  # (B, H, R, N)
    if not pad_slots:
        rank = rank.masked_fill(pad, rounds * (num_buckets + 1))  # after every round
    virtual = torch.arange(rounds * n, device=buckets.device)
    order = torch.argsort(rank.reshape(b, h, -1) * (rounds * n) + virtual, dim=-1)
    is_pad = pad.expand(b, h, rounds, n).reshape(b, h, -1).gather(2, order)
    order = order.masked_fill(is_pad, -1)
    lengths = torch.full((b,), rounds * n, device=buckets.device) if pad_slots else rounds * real.sum(1)
    return order, lengths


def reformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_hashes: int = 2,
    bucket_size: int = 64,
    num_buckets: tuple[int, ...] | None = None,
    hash_seed: int | None = 0,
    rotations: Tensor | None = None,
    pad_slots: bool = False,
    dropout_p: float = 0.0,
    executor: str = "auto",
) -> Tensor:
    """Reformer LSH self-attention (Kitaev et al. 2020), as HF transformers' ``LSHSelfAttention``.

    Shared QK: keys are the normalised queries ``q / rms(q) / sqrt(d)`` (``k`` is checked, unused)
    and scores are ``q_i . key_j`` (no further scale). Per round r of ``num_hashes``, tokens are
    hashed by random rotations (``argmax([xR, -xR])``), sorted by (round, bucket, position) into
    one sequence of ``R * N`` slots, cut into chunks of ``bucket_size``; each chunk attends itself
    and the previous chunk (chunk 0 wraps to the last). A query never attends its own token unless
    it sees nothing else (then its output is its own value). Rounds are combined by their
    log-sum-exp (a key found in two rounds counts twice, as in HF). A sequence of at most
    ``bucket_size`` real tokens: one chunk, full attention. Time O(R N c d), c = bucket_size.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool ``(B, N)``, True = real token; padding takes no slot and each sequence's plan
            (hashed or one chunk, the default bucket count) follows its real length, so padding changes
            no real row. With ``pad_slots``, HF's behaviour: an extra pad bucket (empty slots that shift
            chunk boundaries) and the plan of the padded length N, as HF sees it.
        causal: keys j <= i only (HF ``is_decoder``). Not leak-free: which earlier keys share a
            query's chunks still depends on the buckets of later tokens (as in HF), so the
            ``reformer`` module refuses ``causal=True``.
        num_hashes: R.
        bucket_size: chunk length c (HF ``lsh_attn_chunk_length``).
        num_buckets: bucket factors, e.g. ``(16,)`` or ``(64, 128)``; None = HF's rule
            (:func:`~attnzoo.ops.reformer.hashing.auto_num_buckets`) for each sequence's real length
            (for N with ``pad_slots``); a batch of mixed lengths runs one group per plan.
        hash_seed: seed of the rotations; None draws fresh ones from the global RNG (official).
        rotations: ``(H, d, R, sum(num_buckets) / 2)``, overrides ``hash_seed``.
        dropout_p, executor: see :func:`attnzoo.sparse.sparse_attention`.

    Returns:
        ``(B, H, N, d)``; padded rows are 0.

    Reference: :func:`attnzoo.ops.reformer.naive_reformer_attention`.
    """
    check_qkv(q, k, v, cross=False)
    b, _, n, _ = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v.clone()
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
    groups: dict[tuple[bool, int, tuple[int, ...]], list[int]] = {}
    for i, length in enumerate(plan_lengths(b, n, mask, pad_slots)):
        groups.setdefault(lsh_plan(length, bucket_size, num_hashes, num_buckets), []).append(i)
    run = functools.partial(
        _lsh_attention, bucket_size=bucket_size, causal=causal, hash_seed=hash_seed, rotations=rotations,
        pad_slots=pad_slots, dropout_p=dropout_p, executor=executor,
    )  # fmt: skip
    if len(groups) == 1:  # the whole batch follows one plan (always without a mask or with pad_slots)
        out = run(q, v, real, *next(iter(groups)))
    else:  # sequences of different real lengths: each group of one plan on its own
        out = torch.zeros_like(v)
        for plan, members in groups.items():
            at = torch.tensor(members, device=q.device)
            out = out.index_copy(0, at, run(q[at], v[at], real[at], *plan))
    return zero_masked_rows(out, mask)


def _lsh_attention(
    q: Tensor,
    v: Tensor,
    real: Tensor,
    chunked: bool,
    rounds: int,
    factors: tuple[int, ...],
    *,
    bucket_size: int,
    causal: bool,
    hash_seed: int | None,
    rotations: Tensor | None,
    pad_slots: bool,
    dropout_p: float,
    executor: str,
) -> Tensor:
    """:func:`reformer_attention` of sequences that share one :func:`lsh_plan`: ``q, v (B, H, N, d)``,
    ``real (B, N)`` -> ``(B, H, N, d)`` (padded rows not zeroed yet)."""
    b, h, n, d = q.shape
    if chunked:
        if rotations is None:
            rotations = draw_rotations(h, d, rounds, factors, hash_seed, q.device)
        expected = rotation_shape(h, d, rounds, factors)
        if tuple(rotations.shape) != expected:
            raise ValueError(f"rotations must have shape (H, d, R, nb/2) = {expected}, got {tuple(rotations.shape)}")
        buckets = hash_buckets(q, rotations, factors)
    else:
        buckets = torch.zeros(b, h, 1, n, dtype=torch.long, device=q.device)
    order, lengths = sorted_order(buckets, real, math.prod(factors), pad_slots=pad_slots and chunked)
    slots = math.ceil(rounds * n / bucket_size) * bucket_size
    order = torch.nn.functional.pad(order, (0, slots - rounds * n), value=-1).reshape(b * h, slots)
    pattern = lsh_chunks(order.cpu(), lengths.repeat_interleave(h).cpu(), bucket_size, n, rounds, causal=causal)
    fold = (1, b * h, n, -1)
    out, total = sparse_attention(
        q.reshape(fold), normalise_keys(q).reshape(fold), v.reshape(fold), pattern, scale=1.0, dropout_p=dropout_p,
        executor=executor,
    )  # fmt: skip
    if total is None:
        raise ValueError(f"executor {executor!r} returned no log-sum-exp; the hash rounds need it")
    out, total = out.view(b, h, n, -1), total.view(b, h, n)
    alone = torch.isinf(total)[..., None]  # sees nothing but itself: attends itself
    if bool(alone.any()):
        out = torch.where(alone, v, out.to(v.dtype))
    return out
