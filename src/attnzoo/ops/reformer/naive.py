"""Dense reference for Reformer LSH attention: per round, an N x N matrix of how often each key
token appears in a query's two chunks, then a softmax with those multiplicities; rounds merged by
their log-sum-exp. Hashing and sorting are rewritten here with plain loops (tests only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnzoo.ops.reformer.hashing import auto_num_buckets

__all__ = ["naive_reformer_attention"]


def _buckets(x: Tensor, rotations: Tensor, factors: tuple[int, ...]) -> Tensor:
    """``x (N, d)``, ``rotations (d, R, K)`` -> ``(R, N)`` buckets (factor by factor)."""
    out = torch.zeros(rotations.shape[1], x.shape[0], dtype=torch.long)
    for r in range(rotations.shape[1]):
        start, product = 0, 1
        for f in factors:
            proj = x @ rotations[:, r, start : start + f // 2].to(x.dtype)
            out[r] += product * torch.cat([proj, -proj], -1).argmax(-1)
            start, product = start + f // 2, product * f
    return out


def naive_reformer_attention(
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
) -> Tensor:
    """Dense Reformer with the signature of :func:`reformer_attention` (tests only)."""
    b, h, n, d = q.shape
    keys = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(d)
    out = torch.zeros_like(v)
    for bi in range(b):
        real = [bool(mask[bi, i]) if mask is not None else True for i in range(n)]
        length = n if mask is None or pad_slots else sum(real)  # HF sees N; otherwise the real tokens
        chunked = length > bucket_size
        rounds = num_hashes if chunked else 1
        factors = num_buckets or auto_num_buckets(length, bucket_size)
        nb = math.prod(factors)
        turns = rotations
        if chunked and turns is None:
            shape = (h, d, rounds, sum(factors) // 2)
            turns = torch.randn(shape, generator=torch.Generator().manual_seed(hash_seed or 0))
        for hi in range(h):
            buckets = _buckets(q[bi, hi], turns[hi], factors) if chunked else torch.zeros(1, n, dtype=torch.long)
            slots = []  # (token, round) in slot order
            for r in range(rounds):
                ranked = sorted(range(n), key=lambda i, r=r: (buckets[r, i] if real[i] else nb, i))
                kept = ranked if (pad_slots and chunked) else [i for i in ranked if real[i]]
                slots += [(i, r) for i in kept]
            count = len(slots)
            n_chunks = math.ceil(count / bucket_size)
            scores = q[bi, hi] @ keys[bi, hi].T
            lses, outs = [], []
            for r in range(rounds):
                mult = torch.zeros(n, n, dtype=q.dtype)
                for pos, (i, rr) in enumerate(slots):
                    if rr != r or not real[i]:
                        continue
                    c = pos // bucket_size
                    visible = {c, (c - 1) % n_chunks}
                    for c2 in visible:
                        for j, _ in slots[c2 * bucket_size : (c2 + 1) * bucket_size]:
                            if real[j] and j != i and (not causal or j <= i):
                                mult[i, j] += 1
                logits = torch.where(mult > 0, scores + torch.log(mult.clamp_min(1e-300)), float("-inf"))
                lses.append(torch.logsumexp(logits, -1))
                outs.append(torch.softmax(logits, -1).nan_to_num(0.0) @ v[bi, hi])
            lse = torch.stack(lses)
            weights = torch.softmax(lse, 0).nan_to_num(0.0)
            res = (weights[..., None] * torch.stack(outs)).sum(0)
            alone = torch.isinf(torch.logsumexp(lse, 0))
            res[alone] = v[bi, hi][alone]
            out[bi, hi] = res * torch.tensor(real, dtype=v.dtype)[:, None]
    return out
