"""The sparse attention engine: run any :class:`SparsePattern` on ``(B, H, N, d)`` tensors.

``sparse_attention`` gathers tokens into the pattern's slot order (padding N up to whole blocks),
builds a :class:`ChunkPlan`, runs one executor and scatters the result back to token order.
``merge_partials`` combines several partial attentions of the same queries by their log-sum-exp
(LongNet's mixture, or any split of a key set), with gradients through the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.sparse.executors import EXECUTORS
from attnzoo.sparse.kernels import pick_kernel
from attnzoo.sparse.layout import SparsePattern
from attnzoo.sparse.plan import ChunkPlan, ScoreMod

__all__ = ["merge_partials", "pick_executor", "sparse_attention"]


def pick_executor(q: Tensor, requested: str = "auto") -> str:
    """``gather`` unless ``requested`` names another executor (``flex`` is opt-in: it compiles)."""
    if requested == "auto":
        return "flex" if q.device.type == "cuda" else "gather"
    if requested not in EXECUTORS:
        raise ValueError(f"unknown executor {requested!r}; choose from auto, {', '.join(EXECUTORS)}")
    return requested


def _to_slots(x: Tensor, positions: Tensor | None, length: int) -> Tensor:
    """``x: (B, H, N, d) -> (B, H, L, d)`` in slot order; empty slots hold zeros."""
    b, h, n, d = x.shape
    if positions is None:
        return torch.nn.functional.pad(x, (0, 0, 0, length - n)) if length > n else x
    padded = torch.cat([x, x.new_zeros(b, h, 1, d)], dim=2)  # index n = the zero row
    idx = torch.where(positions >= 0, positions, n).to(x.device)
    idx = idx[None, :, :, None].expand(b, h, length, d)
    return torch.gather(padded, 2, idx)


def _from_slots(x: Tensor, positions: Tensor | None, n: int, fill: float) -> Tensor:
    """Inverse of :func:`_to_slots` for ``(B, H, L[, d])``; tokens no slot holds get ``fill``."""
    if positions is None:
        return x[:, :, :n]
    b, h, length = x.shape[:3]
    tail = x.shape[3:]
    out = x.new_full((b, h, n + 1, *tail), fill)
    idx = torch.where(positions >= 0, positions, n).to(x.device)
    idx = idx[None, :, :].expand(b, h, length)
    if tail:
        idx = idx[..., None].expand(b, h, length, *tail)
    return out.scatter(2, idx, x)[:, :, :n]


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: SparsePattern,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    executor: str = "auto",
    kernel: str = "auto",
    score_mod: ScoreMod | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Softmax attention restricted to ``pattern``, run block-sparse.

    Each query attends, with exact softmax, to the keys the pattern allows (and that are real
    tokens, and not later ones under ``causal``). Work is O(N * visited keys * d); memory O(N * d)
    plus one chunk with the default executor.

    Args:
        q, k, v: ``(B, H, N, d)`` (v may have its own width dv).
        pattern: built for this N (e.g. :func:`attnzoo.sparse.patterns.sliding_window`).
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: keys j <= i only.
        scale: default ``d ** -0.5``.
        dropout_p: dropout on attention probabilities (uses the ``gather-autograd`` executor).
        executor: ``auto`` (gather on CPU, flex on CUDA), ``gather``, ``gather-autograd``, ``flex``, ``dense``.
        kernel: ``auto``, ``cpu_flash`` or ``math`` (gather executors).
        score_mod: additive score bias ``score_mod(h, q_pos, kv_pos)`` on token positions (broadcasting
            index tensors), e.g. a learned relative-position bias; gradients flow into its parameters.

    Returns:
        ``(out, lse)``: ``out: (B, H, N, dv)``, 0 for rows that see no key; ``lse: (B, H, N)`` the
        log-sum-exp of each row's scores, ``-inf`` for rows that see no key (or that the pattern skips);
        ``None`` from the ``flex`` executor on CPU, which cannot return it.

    Raises:
        ValueError: shapes that do not match the pattern, unknown executor or kernel.
    """
    check_qkv(q, k, v, cross=False)
    b, h, n, d = q.shape
    if pattern.seq_len != n:
        raise ValueError(f"pattern {pattern.name} was built for N={pattern.seq_len}, got N={n}")
    mask = check_padding_mask(mask, b, n, q.device)
    for name, heads in (
        ("positions", pattern.slot_positions().shape[0]),
        ("layout", pattern.layout.kv_indices.shape[0]),
    ):
        if heads not in (1, h):
            raise ValueError(f"pattern {pattern.name} has {heads} {name} heads; the input has H={h}")
    scale = d**-0.5 if scale is None else float(scale)
    length = pattern.num_slots
    positions = None if pattern.positions is None else pattern.positions.to(q.device)
    slot_pos = pattern.slot_positions().to(q.device)
    key_ok = (slot_pos >= 0)[None]
    if mask is not None:
        key_ok = key_ok & _from_mask(mask, slot_pos)
    plan = ChunkPlan(
        pattern,
        key_ok,
        batch=b,
        heads=h,
        head_dim=max(d, v.shape[-1]),
        itemsize=q.element_size(),
        causal=causal,
        score_mod=score_mod,
    )
    name = pick_executor(q, executor)
    run = EXECUTORS[name]
    chosen = pick_kernel(q.device, q.dtype, kernel, equal_widths=v.shape[-1] == d)
    qs, ks, vs = (_to_slots(t, positions, length) for t in (q, k, v))
    if name.startswith("gather"):
        out, lse = run(qs, ks, vs, plan, chosen, scale, dropout_p)
    else:
        if dropout_p > 0:
            raise ValueError(f"executor {name!r} does not apply attention dropout; use executor='gather'")
        out, lse = run(qs, ks, vs, plan, chosen, scale)
    lse = None if lse is None else _from_slots(lse, positions, n, float("-inf"))
    return _from_slots(out, positions, n, 0.0), lse


def _from_mask(mask: Tensor, slot_pos: Tensor) -> Tensor:
    """Padding mask ``(B, N)`` read at each slot's token: ``(B, Hp, L)`` (False for empty slots)."""
    return mask[:, slot_pos.clamp_min(0)] & (slot_pos >= 0)[None]


def merge_partials(outs: list[Tensor], lses: list[Tensor], *, detach_weights: bool = False) -> tuple[Tensor, Tensor]:
    """Combine partial attentions of the same queries: ``out = sum_i softmax_i(lse_i) * out_i``.

    With disjoint key sets this equals one softmax over their union; with overlapping ones a key
    counts once per part (LongNet's mixture, spec §10.2). Rows where every part is empty give 0.

    Args:
        outs: each ``(B, H, N, dv)``.
        lses: each ``(B, H, N)``, ``-inf`` where that part saw no key.
        detach_weights: stop gradients through the mixing weights (torchscale's choice); the
            default keeps them, matching the exact dense computation.

    Returns:
        ``(out, lse)`` of the union: ``(B, H, N, dv)``, ``(B, H, N)``.
    """
    stacked = torch.stack(lses)
    total = torch.logsumexp(stacked, dim=0)
    weights = torch.exp(stacked - total.nan_to_num(0.0, neginf=0.0)).nan_to_num(0.0)
    if detach_weights:
        weights = weights.detach()
    out = sum(w[..., None] * o for w, o in zip(weights, outs, strict=True))
    assert isinstance(out, Tensor)
    return out, total
