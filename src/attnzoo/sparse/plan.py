"""Chunked execution plan of a :class:`SparsePattern` over slot tensors (shared by the executors).

The engine works on *slot* tensors ``(B, H, L, d)`` (tokens already gathered into the pattern's
order and padded to L = nB * bs). A plan cuts the nB query blocks into chunks small enough that the
gathered keys and masks of one chunk stay well under glibc's 32 MiB re-mapping threshold, and builds
for each chunk the gathered keys/values and the additive mask.

Shape legend: G = H * nc (heads x query blocks of the chunk), K = visited key blocks, bs = block size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.ops.common import key_mask_bias
from attnzoo.sparse.layout import SparsePattern

__all__ = ["Chunk", "ChunkPlan", "ScoreMod"]

ScoreMod = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``score_mod(h, q_pos, kv_pos) -> float tensor``: additive score bias on original positions."""

CHUNK_BYTES = 12 * 2**20


@dataclass
class Chunk:
    """Inputs of one chunk: query blocks ``[start, stop)``."""

    start: int
    stop: int
    flat_kv: Tensor  # (H * nc * K,) indices into the (H * nB) key blocks
    bias: Tensor | None  # broadcastable to (B, G, bs, K*bs); -inf = masked
    causal: bool  # let the kernel apply the causal mask (diagonal-only layouts)
    has_key: Tensor | None  # (B|1, G, bs) rows with at least one visible key; None = all rows


class ChunkPlan:
    """Everything the executors need to run ``pattern`` on slot tensors of a given shape.

    Args:
        pattern: the sparse pattern.
        key_ok: ``(B|1, Hp|H, L)`` bool, slot holds a real key (non-empty, not padding).
        batch, heads, head_dim, itemsize: shape of the slot tensors.
        causal: apply ``kv_pos <= q_pos``.
        score_mod: optional additive score bias ``score_mod(h, q_pos, kv_pos) -> float`` on original
            positions (e.g. a learned relative-position table); differentiable through the
            ``gather-autograd`` executor.
    """

    def __init__(
        self,
        pattern: SparsePattern,
        key_ok: Tensor,
        *,
        batch: int,
        heads: int,
        head_dim: int,
        itemsize: int,
        causal: bool,
        score_mod: ScoreMod | None = None,
    ) -> None:
        layout = pattern.layout
        self.pattern, self.key_ok, self.causal, self.score_mod = pattern, key_ok, causal, score_mod
        self.batch, self.heads = batch, heads
        self.bs, self.nb, self.k = layout.block_size, layout.num_blocks, layout.max_visits
        device = key_ok.device
        self.kv_indices = layout.kv_indices.to(device)
        self.kv_valid = layout.kv_valid.to(device)
        self.positions = pattern.slot_positions().to(device)
        own = torch.arange(self.nb, device=device)[None, :, None]
        diagonal_only = self.k == 1 and bool((self.kv_indices == own).all())
        # Causal inside diagonal blocks is the kernel's own causal mask when slots keep token order.
        self.kernel_causal = causal and diagonal_only and pattern.mask_mod is None
        if score_mod is not None:
            self.kernel_causal = False
        self.needs_elements = (
            pattern.mask_mod is not None or score_mod is not None or (causal and not self.kernel_causal)
        )
        span = self.k * self.bs
        per_block = heads * (2 * span + 2 * self.bs) * head_dim * itemsize
        if self.needs_elements:
            per_block += batch * heads * self.bs * span * 5  # bool mask + float bias
        self.blocks_per_chunk = max(1, min(self.nb, CHUNK_BYTES // max(per_block, 1)))

    def chunks(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` query-block ranges."""
        step = self.blocks_per_chunk
        return [(s, min(s + step, self.nb)) for s in range(0, self.nb, step)]

    def chunk(self, start: int, stop: int, dtype: torch.dtype) -> Chunk:
        """Gather indices and the additive mask of query blocks ``[start, stop)``."""
        h, nb, bs, k = self.heads, self.nb, self.bs, self.k
        nc = stop - start
        device = self.kv_indices.device
        kv_idx = self.kv_indices[:, start:stop].expand(h, nc, k)
        kv_valid = self.kv_valid[:, start:stop]
        flat = (torch.arange(h, device=device)[:, None, None] * nb + kv_idx).reshape(-1)
        blocks_ok = self._gather_blocks(self.key_ok.view(self.key_ok.shape[0], -1, nb, bs), start, stop)
        allowed = blocks_ok & kv_valid[None, ..., None]  # (B|1, Hx, nc, K, bs)
        allowed = allowed.reshape(allowed.shape[0], allowed.shape[1], nc, 1, k * bs)
        scores = None
        if self.needs_elements:
            elements, scores = self._elements(start, stop)
            allowed = allowed & elements
        allowed = self._by_group(allowed, nc)
        if scores is None and bool(allowed.all()):
            return Chunk(start, stop, flat, None, self.kernel_causal, None)
        bias = key_mask_bias(allowed, dtype)
        if scores is not None:
            bias = bias + self._by_group(scores.to(dtype), nc)
        # Diagonal causal blocks (key-only mask, K = 1): row i sees a key iff some slot <= i is a key.
        has_key = allowed.cumsum(-1).gt(0).squeeze(-2) if self.kernel_causal else allowed.any(-1)
        return Chunk(start, stop, flat, bias, self.kernel_causal, has_key)

    def _by_group(self, x: Tensor, nc: int) -> Tensor:
        """``(B|1, Hx, nc, rows, K*bs) -> (B|1, H*nc, rows, K*bs)`` (heads broadcast when Hx = 1)."""
        x = x.expand(x.shape[0], self.heads, *x.shape[2:])
        return x.reshape(x.shape[0], self.heads * nc, x.shape[-2], x.shape[-1])

    def _gather_blocks(self, per_slot: Tensor, start: int, stop: int) -> Tensor:
        """``per_slot: (B|1, Hs, nB, bs)`` -> values at the visited key blocks ``(B|1, Hx, nc, K, bs)``."""
        kv_idx = self.kv_indices[:, start:stop]
        hx = max(per_slot.shape[1], kv_idx.shape[0])
        heads = torch.arange(hx, device=kv_idx.device)[:, None, None]
        src = per_slot.expand(per_slot.shape[0], hx, *per_slot.shape[2:])
        return src[:, heads, kv_idx.expand(hx, *kv_idx.shape[1:])]

    def _elements(self, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        """Pattern predicate (and causal) and the ``score_mod`` bias, each ``(1, Hx, nc, bs, K*bs)``."""
        pos = self.positions.view(self.positions.shape[0], self.nb, self.bs)
        q_pos = pos[:, start:stop, :, None]  # (Hp, nc, bs, 1)
        kv_pos = self._gather_blocks(pos[None], start, stop)[0]  # (Hx, nc, K, bs)
        kv_pos = kv_pos.reshape(kv_pos.shape[0], stop - start, 1, -1)
        allowed = torch.ones((), dtype=torch.bool, device=pos.device)
        heads = torch.arange(self.heads, device=pos.device)[:, None, None, None]
        q_pos, kv_pos = q_pos.clamp_min(0), kv_pos.clamp_min(0)  # empty slots are masked by key_ok
        if self.pattern.mask_mod is not None:
            allowed = self.pattern.mask_mod(heads, q_pos, kv_pos)
        if self.causal and not self.kernel_causal:
            allowed = allowed & (kv_pos <= q_pos)
        scores = None if self.score_mod is None else self.score_mod(heads, q_pos, kv_pos)[None]
        return allowed[None], scores
