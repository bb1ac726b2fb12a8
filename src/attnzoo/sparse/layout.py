"""Block-sparse layouts: which key blocks each query block visits, plus an element-level mask.

A :class:`SparsePattern` is everything the engine needs to run a sparse attention pattern:

* an optional token order ``positions: (Hp, L)``: slot s of head h holds original token
  ``positions[h, s]`` (``-1`` = empty slot). Patterns that are block-local in another order (2D tiles,
  LongNet's dilated segments) gather tokens into that order; ``None`` means slot i = token i.
* a :class:`BlockLayout` over the L slots: query block i visits key blocks ``kv_indices[h, i, :]``
  (entries with ``kv_valid`` False are padding of the ragged list).
* ``mask_mod(h, q_pos, kv_pos) -> bool``, evaluated on ORIGINAL token positions (broadcasting index
  tensors), saying which pairs inside the visited blocks attend; ``None`` = all of them.

An N x N mask never exists outside :meth:`SparsePattern.to_dense` (tests, figures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BlockLayout", "MaskMod", "SparsePattern"]

MaskMod = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``mask_mod(h, q_pos, kv_pos) -> bool tensor``: True where query ``q_pos`` may attend key ``kv_pos``."""


@dataclass(frozen=True)
class BlockLayout:
    """Which key blocks each query block visits (cf. FlexAttention's ``BlockMask``).

    Attributes:
        block_size: tokens per block (queries and keys alike).
        kv_indices: ``(Hp, nB, K)`` long, key-block indices visited by each query block; Hp is 1
            (shared by all heads) or H.
        kv_valid: ``(Hp, nB, K)`` bool, False for the padding entries of shorter lists.
    """

    block_size: int
    kv_indices: Tensor
    kv_valid: Tensor

    def __post_init__(self) -> None:
        if self.kv_indices.shape != self.kv_valid.shape or self.kv_indices.dim() != 3:
            raise ValueError(
                f"kv_indices and kv_valid must both be (Hp, nB, K); got {tuple(self.kv_indices.shape)} "
                f"and {tuple(self.kv_valid.shape)}"
            )

    @property
    def num_blocks(self) -> int:
        """nB, the number of query (and key) blocks."""
        return self.kv_indices.shape[1]

    @property
    def max_visits(self) -> int:
        """K, the longest list of visited key blocks."""
        return self.kv_indices.shape[2]

    def to_dense(self) -> Tensor:
        """``(Hp, nB, nB)`` bool: block (i, j) is visited."""
        hp, nb, _ = self.kv_indices.shape
        counts = torch.zeros(hp, nb, nb, dtype=torch.int32, device=self.kv_indices.device)
        counts.scatter_add_(2, self.kv_indices, self.kv_valid.to(torch.int32))
        return counts > 0

    def density(self) -> float:
        """Fraction of the nB x nB block grid that is visited (averaged over heads)."""
        return float(self.to_dense().float().mean())

    def __repr__(self) -> str:
        grid = self.to_dense()[0]
        shown = min(grid.shape[0], 32)
        rows = "\n".join("  " + "".join("#" if grid[i, j] else "." for j in range(shown)) for i in range(shown))
        return (
            f"BlockLayout(block_size={self.block_size}, num_blocks={self.num_blocks}, "
            f"max_visits={self.max_visits}, density={self.density():.3f}, head 0:\n{rows})"
        )


@dataclass(frozen=True)
class SparsePattern:
    """A named sparse attention pattern over a sequence padded to ``layout.num_blocks * block_size`` slots.

    Attributes:
        name: e.g. ``"sliding_window(before=4, after=4)"``.
        layout: the block layout over slots.
        mask_mod: element-level predicate on original positions, or ``None``.
        positions: ``(Hp, L)`` long, original token of each slot (-1 = empty), or ``None`` (identity).
        seq_len: N, the number of real tokens the pattern was built for.
        band: ``(before, after)`` declares that ``mask_mod`` is exactly the band
            ``q - before <= kv <= q + after`` (``positions`` None, band layout): the engine may then run
            query blocks away from the ends on shifted views of the keys (:mod:`attnzoo.sparse.band`).
            ``None`` (default) for any other pattern.
        groups: ``(b, s)`` declares that the pattern is exactly "softmax inside groups of b tokens at
            stride s": N = G b s, group t is the t-th row of the ``(G, b, s) -> (G, s, b)`` view
            transpose of the tokens and attends only itself (layout, ``positions`` and ``mask_mod`` say
            the same). The engine may then run all groups as one batched kernel call on that view
            (:func:`attnzoo.sparse.dense.grouped_attention`). ``None`` (default) for any other pattern.
        masked_gather: declares that each token holds at most one slot per head and that (almost) no visited
            block is fully allowed, so the engine may run every chunk of query blocks as one masked kernel call
            (:func:`attnzoo.sparse.masked_gather.masked_gather_attention`) instead of splitting full from
            partial blocks. False (default): the block-sparse plan.
        copies: R >= 1. With R > 1 the pattern is over the ``seq_len = R * N`` virtual tokens of R copies of
            the sequence (Reformer's hash rounds): virtual token ``r * N + i`` is token i. The engine takes
            ``(B, H, N, d)`` inputs and gives each token the softmax over the multiset union of its copies'
            keys (a key reached from two copies counts twice): the log-sum-exp merge of the copies.
            ``mask_mod`` sees virtual positions; the engine's ``causal`` flag is refused (say it in
            ``mask_mod``).
    """

    name: str
    layout: BlockLayout
    mask_mod: MaskMod | None
    positions: Tensor | None
    seq_len: int
    band: tuple[int, int] | None = None
    groups: tuple[int, int] | None = None
    masked_gather: bool = False
    copies: int = 1

    @property
    def num_slots(self) -> int:
        """L = nB * block_size."""
        return self.layout.num_blocks * self.layout.block_size

    def slot_positions(self) -> Tensor:
        """``(Hp, L)`` original token index of every slot (-1 for empty and beyond-N slots)."""
        if self.positions is not None:
            return self.positions
        pos = torch.arange(self.num_slots, device=self.layout.kv_indices.device)
        return pos.masked_fill(pos >= self.seq_len, -1)[None]

    def full_entries(self) -> Tensor:
        """``(Hp, nB, K)`` bool: visited key blocks that ``mask_mod`` allows for every (query, key) pair.

        Computed once per pattern (patterns are cached), block by block, never as an N x N mask.
        Empty slots do not count against fullness (the engine masks them as keys anyway).
        """
        cached = self.__dict__.get("_full_entries")
        if cached is not None:
            return cached
        layout = self.layout
        if self.mask_mod is None:
            full = layout.kv_valid.clone()
        else:
            pos = self.slot_positions().view(-1, layout.num_blocks, layout.block_size)
            hx = max(pos.shape[0], layout.kv_indices.shape[0])
            heads = torch.arange(hx)[:, None, None]
            kv_pos = pos.expand(hx, -1, -1)[heads, layout.kv_indices.expand(hx, -1, -1)]  # (Hx, nB, K, bs)
            q_pos = pos[:, :, None, :, None]  # (Hp, nB, 1, bs, 1)
            k_pos = kv_pos[:, :, :, None, :]  # (Hx, nB, K, 1, bs)
            ok = self.mask_mod(torch.zeros((), dtype=torch.long), q_pos.clamp_min(0), k_pos.clamp_min(0))
            ok = ok | (q_pos < 0) | (k_pos < 0)
            full = ok.flatten(-2).all(-1) & layout.kv_valid
        object.__setattr__(self, "_full_entries", full)
        return full

    def to_dense(self, *, causal: bool = False) -> Tensor:
        """``(Hp, N, N)`` bool mask over original tokens: the exact attention pattern (for tests and plots).

        An entry is True when query token i and key token j share a visited block pair in some slot
        and ``mask_mod`` (and ``causal``) allow them.
        """
        pos = self.slot_positions()
        hp_pos, length = pos.shape
        bs, nb = self.layout.block_size, self.layout.num_blocks
        block_of_slot = torch.arange(length, device=pos.device) // bs
        visited = self.layout.to_dense()  # (Hp, nB, nB)
        hp = max(hp_pos, visited.shape[0])
        pos = pos.expand(hp, length)
        slot_pairs = visited.expand(hp, nb, nb)[:, block_of_slot][:, :, block_of_slot]  # (Hp, L, L)
        qp, kp = pos[:, :, None], pos[:, None, :]
        allowed = slot_pairs & (qp >= 0) & (kp >= 0)
        if self.mask_mod is not None:
            heads = torch.arange(hp, device=pos.device)[:, None, None]
            allowed &= self.mask_mod(heads, qp.clamp_min(0), kp.clamp_min(0))
        if causal:
            allowed &= kp <= qp
        heads = torch.arange(hp, device=pos.device)
        real = pos >= 0
        per_token = torch.zeros(hp, self.seq_len + 1, dtype=torch.long, device=pos.device)
        per_token.scatter_add_(1, pos.masked_fill(~real, self.seq_len), real.long())
        if bool((per_token[:, :-1] <= 1).all()):  # each token holds at most one slot per head: gather
            slot = torch.full((hp, self.seq_len + 1), length, dtype=torch.long, device=pos.device)
            slots = torch.arange(length, device=pos.device).expand(hp, length)
            slot.scatter_(1, pos.masked_fill(~real, self.seq_len), slots)  # empty slots land on column N
            padded = torch.nn.functional.pad(allowed, (0, 1, 0, 1))  # slot L: never allowed
            rows = slot[:, : self.seq_len]
            by_row = padded.gather(1, rows[:, :, None].expand(hp, self.seq_len, length + 1))
            return by_row.gather(2, rows[:, None, :].expand(hp, self.seq_len, self.seq_len))
        dense = torch.zeros(hp, self.seq_len, self.seq_len, dtype=torch.bool, device=pos.device)
        h_idx = heads[:, None, None].expand_as(allowed)
        keep = allowed.nonzero(as_tuple=True)
        dense[h_idx[keep], qp.expand_as(allowed)[keep], kp.expand_as(allowed)[keep]] = True
        return dense
