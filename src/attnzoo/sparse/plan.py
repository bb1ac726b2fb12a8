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
    """One kernel call: query blocks ``[start, stop)`` against ``span`` gathered key slots each."""

    start: int
    stop: int
    flat_kv: Tensor  # (H * nc * Kp,) indices into the (H * nB) key blocks, ordered (head, query block, entry)
    span: int  # Kp * bs
    bias: Tensor | None  # broadcastable to (B, G, bs, span); -inf = masked
    causal: bool  # let the kernel apply the causal mask (diagonal-only layouts)
    has_key: Tensor | None  # (B|1, G, bs|1) rows with at least one visible key; None = all rows


class ChunkPlan:
    """Everything the executors need to run ``pattern`` on slot tensors of a given shape.

    Visited key blocks that the pattern (and ``causal``) allow entirely are "full": they need only
    the cheap key-padding mask, while the others ("partial") need the element mask of every
    (query, key) pair. By default each chunk is run as two kernel calls, one per kind, merged by
    log-sum-exp (as FlexAttention separates ``full_kv_indices``).

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
        own = torch.arange(self.nb)[None, :, None]
        diagonal_only = self.k == 1 and bool((layout.kv_indices == own).all())  # on the CPU layout: no device sync
        # Causal inside diagonal blocks is the kernel's own causal mask when slots keep token order.
        self.kernel_causal = causal and diagonal_only and pattern.mask_mod is None and score_mod is None
        self.needs_elements = (
            pattern.mask_mod is not None or score_mod is not None or (causal and not self.kernel_causal)
        )
        self.full = self._full_entries() if self.needs_elements and score_mod is None else None
        self._selections: dict[int, list[tuple[Tensor, Tensor, bool]]] = {}
        span = self.k * self.bs
        per_block = heads * (2 * span + 2 * self.bs) * head_dim * itemsize
        if self.needs_elements:
            per_block += batch * heads * self.bs * span * 5  # bool mask + float bias
        self.blocks_per_chunk = max(1, min(self.nb, CHUNK_BYTES // max(per_block, 1)))

    def chunks(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` query-block ranges."""
        step = self.blocks_per_chunk
        return [(s, min(s + step, self.nb)) for s in range(0, self.nb, step)]

    def chunk(self, start: int, stop: int, dtype: torch.dtype, *, split: bool = True) -> list[Chunk]:
        """The kernel calls for query blocks ``[start, stop)``: full and partial key blocks apart when
        ``split`` (and the pattern has element masks), else one call over all visited blocks."""
        if not split or self.full is None:
            selections = [(self.kv_indices[:, start:stop], self.kv_valid[:, start:stop], self.needs_elements)]
        else:
            selections = self._split_selections(start, stop)
        return [self._part(start, stop, idx, valid, dtype, elementwise=ew) for idx, valid, ew in selections]

    def _split_selections(self, start: int, stop: int) -> list[tuple[Tensor, Tensor, bool]]:
        """``(idx, valid, elementwise)`` of the full and the partial key blocks of one chunk.

        Computed once per chunk and plan (the forward and the recomputing backward share it), so the
        ragged lists are compacted, and the count of each read back, once per training step.
        """
        cached = self._selections.get(start)
        if cached is not None:
            return cached
        assert self.full is not None
        found = []
        for selected, elementwise in ((self.full, False), (self.kv_valid & ~self.full, True)):
            chosen = selected[:, start:stop]
            kp = int(chosen.sum(-1).max())
            if kp == 0:
                continue
            order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)[..., :kp]
            idx = torch.gather(self.kv_indices[:, start:stop].expand_as(chosen), -1, order)
            found.append((idx, torch.gather(chosen, -1, order), elementwise))
        self._selections[start] = found
        return found

    def _part(
        self, start: int, stop: int, idx: Tensor, valid: Tensor, dtype: torch.dtype, *, elementwise: bool
    ) -> Chunk:
        """One kernel call over key blocks ``idx: (Hi, nc, Kp)`` (``valid`` False = padding entry)."""
        h, nb, bs = self.heads, self.nb, self.bs
        nc, kp = stop - start, idx.shape[-1]
        flat = (torch.arange(h, device=idx.device)[:, None, None] * nb + idx.expand(h, nc, kp)).reshape(-1)
        blocks_ok = self._gather_blocks(self.key_ok.view(self.key_ok.shape[0], -1, nb, bs), idx)
        allowed = blocks_ok & valid[None, ..., None]  # (B|1, Hx, nc, Kp, bs)
        allowed = allowed.reshape(allowed.shape[0], allowed.shape[1], nc, 1, kp * bs)
        scores = None
        if elementwise:
            elements, scores = self._elements(start, stop, idx)
            allowed = allowed & elements
        if scores is None and bool(allowed.all()):
            return Chunk(start, stop, flat, kp * bs, None, self.kernel_causal, None)
        bias = key_mask_bias(allowed, dtype)
        if scores is not None:
            bias = bias + scores.to(dtype)
        # Diagonal causal blocks (key-only mask, Kp = 1): row i sees a key iff some slot <= i is a key.
        has_key = allowed.cumsum(-1).gt(0).squeeze(-2) if self.kernel_causal else allowed.any(-1)
        return Chunk(start, stop, flat, kp * bs, self._by_group(bias), self.kernel_causal, self._by_group(has_key))

    def _by_group(self, x: Tensor) -> Tensor:
        """``(B|1, Hx, nc, ...) -> (B|1, H*nc, ...)`` (heads broadcast when Hx = 1)."""
        x = x.expand(x.shape[0], self.heads, *x.shape[2:])
        return x.reshape(x.shape[0], self.heads * x.shape[2], *x.shape[3:])

    def _gather_blocks(self, per_slot: Tensor, idx: Tensor) -> Tensor:
        """``per_slot: (B|1, Hs, nB, bs)`` at key blocks ``idx: (Hi, nc, Kp)`` -> ``(B|1, Hx, nc, Kp, bs)``."""
        hx = max(per_slot.shape[1], idx.shape[0])
        heads = torch.arange(hx, device=idx.device)[:, None, None]
        src = per_slot.expand(per_slot.shape[0], hx, *per_slot.shape[2:])
        return src[:, heads, idx.expand(hx, *idx.shape[1:])]

    def _elements(self, start: int, stop: int, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Pattern predicate (and causal), ``(1, Hx, nc, bs, Kp*bs)``, and the ``score_mod`` bias (all H heads).

        ``mask_mod`` must not depend on the head (per-head patterns use per-head positions).
        """
        pos = self.positions.view(self.positions.shape[0], self.nb, self.bs)
        q_pos = pos[:, start:stop, :, None].clamp_min(0)  # (Hp, nc, bs, 1); empty slots are masked by key_ok
        kv_pos = self._gather_blocks(pos[None], idx)[0].clamp_min(0)  # (Hx, nc, Kp, bs)
        kv_pos = kv_pos.reshape(kv_pos.shape[0], stop - start, 1, -1)
        allowed = torch.ones((), dtype=torch.bool, device=pos.device)
        if self.pattern.mask_mod is not None:
            allowed = self.pattern.mask_mod(torch.zeros((), dtype=torch.long, device=pos.device), q_pos, kv_pos)
        if self.causal and not self.kernel_causal:
            allowed = allowed & (kv_pos <= q_pos)
        scores = None
        if self.score_mod is not None:
            heads = torch.arange(self.heads, device=pos.device)[:, None, None, None]
            scores = self.score_mod(heads, q_pos, kv_pos)[None]
        return allowed[None], scores

    def _full_entries(self) -> Tensor:
        """``(Hx, nB, K)`` bool: visited key blocks that ``mask_mod`` and ``causal`` allow for every pair."""
        full = self.pattern.full_entries().to(self.kv_valid.device) & self.kv_valid
        if self.causal:
            pos = self.positions.view(self.positions.shape[0], self.nb, self.bs)
            last_key = pos.amax(-1)  # (Hp, nB); empty slots are -1
            first_query = torch.where(pos >= 0, pos, torch.iinfo(pos.dtype).max).amin(-1)
            heads = torch.arange(max(pos.shape[0], self.kv_indices.shape[0]), device=pos.device)[:, None, None]
            key_last = last_key.expand(heads.shape[0], -1)[heads, self.kv_indices.expand(heads.shape[0], -1, -1)]
            full = full & (key_last <= first_query.expand(heads.shape[0], -1)[:, :, None])
        return full
