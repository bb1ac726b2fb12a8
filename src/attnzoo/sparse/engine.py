"""The sparse attention engine: run any :class:`SparsePattern` (or a union of them) on ``(B, H, N, d)``.

``sparse_attention`` gathers tokens into each pattern's slot order (padding N up to whole blocks),
builds a :class:`ChunkPlan` per pattern, runs one executor and brings the result back to token
order. Several patterns (LongNet's branches) form one softmax over the union of their keys: with
the default executor a single fused autograd function whose backward hands every pattern the
union's output and log-sum-exp; otherwise ``merge_partials``, which combines partial attentions of
the same queries by their log-sum-exp with autograd through the weights.

Fast paths (same results, less work): patterns that declare a ``band`` (sliding windows) run their
interior query blocks on shifted views of the keys with one constant mask (:mod:`.band`); short
sequences whose visited blocks cover most of the matrix run as one dense masked call (:mod:`.dense`);
``groups`` run as batched calls on a view (:func:`.dense.grouped_attention`); ``masked_gather`` patterns
(Reformer's chunks) as one masked call per chunk, copies merged per token (:mod:`.masked_gather`).
Work per pattern is counted by :func:`attnzoo.sparse.dense.visited_share`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv, pad_to_multiple
from attnzoo.sparse.dense import dense_attention, fused_dense, grouped_attention, prefer_dense
from attnzoo.sparse.executors import EXECUTORS, gather_backward, gather_forward, run_gather_autograd
from attnzoo.sparse.kernels import Kernel, pick_kernel, row_dot
from attnzoo.sparse.layout import SparsePattern
from attnzoo.sparse.masked_gather import masked_gather_attention
from attnzoo.sparse.plan import ChunkPlan, ScoreMod
from attnzoo.sparse.threads import bookkeeping, one_thread_backward
from attnzoo.sparse.trace import note_path

__all__ = ["merge_partials", "pick_executor", "sparse_attention"]


FLEX_BLOCK = 128
"""FlexAttention's CUDA kernels tile by 128 tokens; ``auto`` uses flex only for layouts built on that."""
EXECUTOR_NAMES = ("auto", "gather", *EXECUTORS)
"""Every value the ``executor`` argument (and the mechanisms' ``executor`` option) accepts."""


def pick_executor(
    q: Tensor, requested: str = "auto", block_sizes: Sequence[int] = (FLEX_BLOCK,), *, dropout: bool = False
) -> str:
    """The executor that will run: for ``auto``, ``flex`` on CUDA when every pattern's block size is a
    multiple of 128 and there is no attention dropout, else ``gather``; otherwise the executor named."""
    if requested == "auto":
        flex_ok = q.is_cuda and not dropout and all(bs % FLEX_BLOCK == 0 for bs in block_sizes)
        return "flex" if flex_ok else "gather"
    if requested not in EXECUTOR_NAMES:
        raise ValueError(f"unknown executor {requested!r}; choose from {', '.join(EXECUTOR_NAMES)}")
    return requested


@dataclass
class _Run:
    """One pattern prepared for one input: its plan and the token <-> slot maps.

    With a token order (``positions``), slot s of head h holds token ``positions[h, s]``; ``src``
    indexes the flattened ``(H * N)`` tokens for every ``(H * L)`` slot (empty slots read token 0
    of their head, harmless: they are masked as keys and dropped as queries), and ``valid_src`` /
    ``dst`` map the non-empty slots back to tokens. Without one, slots are the tokens padded to L.
    """

    plan: ChunkPlan
    length: int
    seq_len: int
    heads: int
    src: Tensor | None = None
    valid: Tensor | None = None
    valid_src: Tensor | None = None
    dst: Tensor | None = None

    @classmethod
    def build(
        cls, plan: ChunkPlan, positions: Tensor | None, length: int, seq_len: int, heads: int, device: torch.device
    ) -> _Run:
        """Index maps from the pattern's (CPU) ``positions``, computed there and moved once to ``device``."""
        if positions is None:
            return cls(plan, length, seq_len, heads)
        pos = positions.cpu().expand(heads, length)
        valid = pos >= 0
        src = (torch.arange(heads)[:, None] * seq_len + pos.clamp_min(0)).reshape(-1)
        valid_src = valid.reshape(-1).nonzero().squeeze(1)
        dst = src[valid_src]
        return cls(plan, length, seq_len, heads, *(t.to(device) for t in (src, valid, valid_src, dst)))

    def slots(self, x: Tensor, *, empty: float | None = None) -> Tensor:
        """``(B, H, N[, d]) -> (B, H, L[, d])``; ``empty`` (if given) fills the empty slots: 0 for gradients,
        ``-inf`` for a log-sum-exp (an empty slot holds token 0's query but sees other keys, so token 0's lse
        is not its own)."""
        b, tail = x.shape[0], x.shape[3:]
        if self.src is None:
            return pad_to_multiple(x, self.plan.bs, dim=2)
        out = x.reshape(b, self.heads * self.seq_len, *tail).index_select(1, self.src)
        out = out.view(b, self.heads, self.length, *tail)
        if empty is not None:
            assert self.valid is not None
            out = out.masked_fill(~self.valid.view(1, self.heads, self.length, *([1] * len(tail))), empty)
        return out

    def add_to_tokens(self, target: Tensor, x: Tensor) -> None:
        """``target (B, H, N[, d]) += x (B, H, L[, d])`` mapped back to tokens (empty slots dropped)."""
        if self.src is None:
            target += x[:, :, : self.seq_len]
            return
        assert self.valid_src is not None and self.dst is not None
        b, tail = x.shape[0], x.shape[3:]
        picked = x.reshape(b, self.heads * self.length, *tail).index_select(1, self.valid_src)
        target.view(b, self.heads * self.seq_len, *tail).index_add_(1, self.dst, picked)

    def tokens(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """``(B, H, L[, d]) -> (B, H, N[, d])``; tokens that no slot holds get ``fill``."""
        if self.src is None:
            return x[:, :, : self.seq_len]
        assert self.valid_src is not None and self.dst is not None
        b, tail = x.shape[0], x.shape[3:]
        picked = x.reshape(b, self.heads * self.length, *tail).index_select(1, self.valid_src)
        out = x.new_full((b, self.heads * self.seq_len, *tail), fill).index_copy_(1, self.dst, picked)
        return out.view(b, self.heads, self.seq_len, *tail)


def _check_pattern(pattern: SparsePattern, n: int, h: int) -> None:
    """Raises ValueError when ``pattern`` was built for another length or head count than ``(N, H)``."""
    if pattern.seq_len != n:
        raise ValueError(f"pattern {pattern.name} was built for N={pattern.seq_len}, got N={n}")
    for name, heads in (
        ("positions", 1 if pattern.positions is None else pattern.positions.shape[0]),
        ("layout", pattern.layout.kv_indices.shape[0]),
    ):
        if heads not in (1, h):
            raise ValueError(f"pattern {pattern.name} has {heads} {name} heads; the input has H={h}")


def _prepare(
    q: Tensor, v: Tensor, pattern: SparsePattern, mask: Tensor | None, causal: bool, score_mod: ScoreMod | None
) -> _Run:
    b, h, n, d = q.shape
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
    return _Run.build(plan, pattern.positions, pattern.num_slots, n, h, q.device)


class _FusedUnion(torch.autograd.Function):
    """Fused gather executor over one or more patterns, merged by log-sum-exp.

    Backward: each pattern's chunks are recomputed and given the merged output and log-sum-exp
    (exact gradients of the union's softmax), or, with ``detach`` (torchscale's mixture), its own
    output and log-sum-exp and the incoming gradient scaled by its fixed mixing weight.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        runs: list[_Run],
        kernel: Kernel,
        scale: float,
        detach: bool,
        dropout_p: float,
    ):  # type: ignore[override]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        # with dropout, one seed per call from torch's default generator (torch.manual_seed makes runs
        # repeatable); each pattern and kernel call derives its own, and the backward redraws the same
        # masks. Without dropout nothing is drawn, so evaluation never advances the global RNG.
        seed = int(torch.randint(0, 2**62, (1,))) if dropout_p > 0.0 else 0
        drops = [None if dropout_p == 0.0 else (dropout_p, seed + i) for i in range(len(runs))]
        parts = [
            gather_forward(run.slots(q), run.slots(k), run.slots(v), run.plan, kernel, scale, drop)
            for run, drop in zip(runs, drops, strict=True)
        ]
        if len(runs) == 1:
            out, lse = runs[0].tokens(parts[0][0]), runs[0].tokens(parts[0][1], float("-inf"))
        else:
            lse = torch.logsumexp(
                torch.stack([run.tokens(part[1], float("-inf")) for run, part in zip(runs, parts, strict=True)]), 0
            )
            out = q.new_zeros(*q.shape[:3], v.shape[-1])
            for run, (part_out, part_lse) in zip(runs, parts, strict=True):
                run.add_to_tokens(out, part_out * _weights(part_lse, run, lse)[..., None].to(out.dtype))
        ctx.runs, ctx.kernel, ctx.scale, ctx.drops = runs, kernel, scale, drops
        ctx.set_materialize_grads(False)  # an unused lse must reach backward as None, not zeros
        kept = [t for part in parts for t in part] if detach and len(runs) > 1 else []
        ctx.save_for_backward(q, k, v, out, lse, *kept)
        if detach:
            ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @one_thread_backward
    def backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None):  # type: ignore[override]
        q, k, v, out, lse, *kept = ctx.saved_tensors
        totals: list[Tensor] = []  # (dq, dk, dv); the first run's own when its slots are the tokens
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        for i, run in enumerate(ctx.runs):
            grad = run.slots(dout, empty=0.0)
            if kept:  # detached mixture: part i with its own statistics, its weight held constant
                ref_out, ref_lse = kept[2 * i], kept[2 * i + 1]
                grad, grad_lse = grad * _weights(ref_lse, run, lse)[..., None].to(grad.dtype), None
            else:  # exact: every part sees the union's output and log-sum-exp
                ref_out, ref_lse = run.slots(out), run.slots(lse, empty=float("-inf"))
                grad_lse = None if dlse is None else run.slots(dlse, empty=0.0)
            dqs, dks, dvs = gather_backward(
                grad,
                grad_lse,
                run.slots(q),
                run.slots(k),
                run.slots(v),
                ref_out,
                ref_lse,
                run.plan,
                ctx.kernel,
                ctx.scale,
                ctx.drops[i],
            )
            if not totals and run.src is None:  # fresh, in token order: no zeros (a copy only if padded)
                totals = [part[:, :, : run.seq_len].contiguous() for part in (dqs, dks, dvs)]
                continue
            totals = totals or [torch.zeros_like(x) for x in (q, k, v)]
            for total, part in zip(totals, (dqs, dks, dvs), strict=True):
                run.add_to_tokens(total, part)
        return *totals, None, None, None, None, None


def _weights(part_lse: Tensor, run: _Run, total_lse: Tensor) -> Tensor:
    """Mixing weights ``exp(lse_part - lse_union)`` in the part's slot order (0 where the part has no key)."""
    union = run.slots(total_lse.masked_fill(torch.isinf(total_lse), 0.0))
    return torch.exp(part_lse - union).nan_to_num(0.0)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: SparsePattern | Sequence[SparsePattern],
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    executor: str = "auto",
    kernel: str = "auto",
    score_mod: ScoreMod | None = None,
    detach_weights: bool = False,
    need_lse: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Softmax attention restricted to ``pattern`` (or to the union of several), run block-sparse.

    Each query attends, with exact softmax, to the keys the pattern allows (and that are real
    tokens, and not later ones under ``causal``). Given several patterns, the softmax runs over the
    multiset union of their keys (a key allowed by two patterns counts twice): the same as
    :func:`merge_partials` of each pattern's attention, i.e. LongNet's mixture. Work is
    O(N * visited keys * d); memory O(N * d) plus one chunk with the default executor.

    Args:
        q, k, v: ``(B, H, N, d)`` (v may have its own width dv).
        pattern: one pattern or a list, each built for this N (e.g. :func:`attnzoo.sparse.patterns.sliding_window`),
            or for R * N virtual tokens when it declares ``copies = R`` (each token's copies merged by log-sum-exp).
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: keys j <= i only.
        scale: default ``d ** -0.5``.
        dropout_p: dropout on attention probabilities (the ``gather`` executor applies it with the ``math``
            kernel, redrawing each chunk's mask from a seed in the backward pass; memory stays O(N d)).
        executor: ``auto`` (see :func:`pick_executor`; on CPU, when the visited blocks cover most of a short
            sequence's N x N scores, one dense masked kernel call instead: :mod:`attnzoo.sparse.dense`),
            ``gather``, ``gather-autograd``, ``flex``, ``dense``.
        kernel: ``auto``, ``cpu_flash`` or ``math`` (gather executors).
        score_mod: additive score bias ``score_mod(h, q_pos, kv_pos)`` on token positions (broadcasting
            index tensors), e.g. a learned relative-position bias; gradients flow into its parameters.
        detach_weights: with several patterns, hold the mixing weights constant in the backward pass
            (torchscale's LongNet); the returned lse then carries no gradient.
        need_lse: False when the caller drops the lse: then a short unpadded sequence that the dense rule picks
            runs as one fused kernel call with PyTorch's own backward, as SDPA runs softmax
            (:func:`attnzoo.sparse.dense.fused_dense`), and the lse returned may be None.

    Returns:
        ``(out, lse)``: ``out: (B, H, N, dv)``, 0 for rows that see no key; ``lse: (B, H, N)`` the
        log-sum-exp of each row's scores, ``-inf`` for rows that see no key (or that the pattern skips);
        ``None`` from the ``flex`` executor on CPU, which cannot return it.

    Raises:
        ValueError: shapes that do not match the pattern, unknown executor or kernel, patterns with different
            ``copies``, or ``causal`` with copies.
    """
    check_qkv(q, k, v, cross=False)
    b, _, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if q.numel() == 0 or v.numel() == 0:  # B, H or N is 0: an empty result of the right shape
        return v * 0, q.new_full(q.shape[:-1], float("-inf"))
    patterns = [pattern] if isinstance(pattern, SparsePattern) else list(pattern)
    if not patterns:
        raise ValueError("sparse_attention needs at least one pattern")
    scale = d**-0.5 if scale is None else float(scale)
    copies = _copies(patterns, causal)
    for p in patterns:
        _check_pattern(p, n * copies, q.shape[1])
    name = pick_executor(q, executor, [p.layout.block_size for p in patterns], dropout=dropout_p > 0.0)
    if dropout_p > 0.0 and kernel == "auto":
        kernel = "math"  # the only kernel that applies dropout
    chosen = pick_kernel(q.device, q.dtype, kernel, equal_widths=v.shape[-1] == d)
    fused_ok = executor == "auto" and dropout_p == 0.0 and chosen.name == "cpu_flash" and score_mod is None
    if fused_ok and not need_lse and mask is None and copies == 1 and not (detach_weights and len(patterns) > 1):
        out = fused_dense(q, k, v, patterns, causal, scale)
        if out is not None:
            return out, None
    with bookkeeping(q.device):  # the engine's small ops on one thread, its kernels on all
        if fused_ok and len(patterns) == 1 and patterns[0].masked_gather:
            note_path("masked-gather")
            return masked_gather_attention(q, k, v, patterns[0], mask, causal, scale, chosen)
        run = _Call(name, chosen, scale, fused_ok, float(dropout_p), score_mod, detach_weights)
        if copies == 1:
            return run(q, k, v, patterns, mask, causal)
        # the R copies as R * N virtual tokens, each token's copies merged by log-sum-exp
        out, lse = run(*(x.repeat(1, 1, copies, 1) for x in (q, k, v)), patterns, _repeat(mask, copies), causal)
        if lse is None:
            raise ValueError(f"executor {name!r} returned no log-sum-exp; patterns with copies need it")
        outs, lses = out.unflatten(2, (copies, n)).unbind(2), lse.unflatten(2, (copies, n)).unbind(2)
        return merge_partials(list(outs), list(lses), detach_weights=detach_weights)


def _copies(patterns: Sequence[SparsePattern], causal: bool) -> int:
    """The patterns' common ``copies``.

    Raises:
        ValueError: patterns with different copies, fewer than 1, or ``causal`` with copies (the flag
            would compare virtual positions).
    """
    found = {p.copies for p in patterns}
    if len(found) != 1 or min(found) < 1:
        raise ValueError(f"patterns must share one copies value >= 1; got {sorted(found)}")
    copies = found.pop()
    if copies > 1 and causal:
        raise ValueError("causal=True is refused for patterns with copies > 1; express causality in mask_mod")
    return copies


def _repeat(mask: Tensor | None, copies: int) -> Tensor | None:
    return None if mask is None else mask.repeat(1, copies)


@dataclass
class _Call:
    """How one :func:`sparse_attention` call runs its patterns (executor, kernel and options chosen)."""

    executor: str
    kernel: Kernel
    scale: float
    fused_ok: bool
    dropout_p: float
    score_mod: ScoreMod | None
    detach_weights: bool

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, patterns: list[SparsePattern], mask: Tensor | None, causal: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Grouped or dense fast path, else the block-sparse plan on the chosen executor."""
        name, chosen, scale = self.executor, self.kernel, self.scale
        union = len(patterns) > 1
        if self.fused_ok and not union and patterns[0].groups is not None and not (causal and mask is not None):
            note_path("grouped")
            return grouped_attention(q, k, v, patterns[0].groups, causal, scale, chosen, mask)
        if (
            self.fused_ok
            and not (self.detach_weights and union)
            and prefer_dense(patterns, q.shape[0], mask is not None, q.element_size(), causal=causal)
        ):
            note_path("dense-fallback")
            return dense_attention(q, k, v, patterns, mask, causal, scale, chosen)
        runs = [_prepare(q, v, p, mask, causal, self.score_mod) for p in patterns]  # the block-sparse plan
        learned_bias = self.score_mod is not None and torch.is_grad_enabled()
        note_path("gather-autograd" if name == "gather" and learned_bias else name)
        if name == "gather" and not learned_bias:
            return _FusedUnion.apply(q, k, v, runs, chosen, scale, self.detach_weights, self.dropout_p)
        if self.dropout_p > 0 and name not in ("gather", "gather-autograd"):
            raise ValueError(f"executor {name!r} does not apply attention dropout; use executor='gather'")
        outs, lses = [], []
        for run in runs:
            qs, ks, vs = run.slots(q), run.slots(k), run.slots(v)
            if name in ("gather", "gather-autograd"):
                out, lse = run_gather_autograd(qs, ks, vs, run.plan, chosen, scale, self.dropout_p)
            else:
                out, lse = EXECUTORS[name](qs, ks, vs, run.plan, chosen, scale)
            outs.append(run.tokens(out))
            lses.append(None if lse is None else run.tokens(lse, float("-inf")))
        if not union:
            return outs[0], lses[0]
        if any(lse is None for lse in lses):
            raise ValueError(f"executor {name!r} returned no log-sum-exp here; a union of patterns needs it")
        return merge_partials(outs, lses, detach_weights=self.detach_weights)  # type: ignore[arg-type]


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

    Raises:
        ValueError: no parts, or not one lse per output.
    """
    if not outs or len(outs) != len(lses):
        raise ValueError(
            f"merge_partials needs one lse per output and at least one part, got {len(outs)} and {len(lses)}"
        )
    return _Merge.apply(detach_weights, *outs, *lses)


class _Merge(torch.autograd.Function):
    """:func:`merge_partials` with a written-out backward: ``d out_i = w_i dO`` and
    ``d lse_i = w_i (dO.out_i - dO.out) + w_i d(total)`` (without the first term when the weights are
    detached), the row dot products by :func:`row_dot` (no (B, H, N, dv) product temporaries)."""

    @staticmethod
    def forward(ctx: Any, detach: bool, *parts: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        outs, lses = parts[: len(parts) // 2], parts[len(parts) // 2 :]
        stacked = torch.stack(lses)
        total = torch.logsumexp(stacked, dim=0)
        weights = torch.exp(stacked - total.nan_to_num(0.0, neginf=0.0)).nan_to_num(0.0)
        out = outs[0] * weights[0][..., None]
        for w, o in zip(weights[1:], outs[1:], strict=True):
            out.addcmul_(o, w[..., None])  # in place: one (B, H, N, dv) result, no temporary per part
        ctx.detach = detach
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(weights, *outs)  # not out: sum_i w_i dO.out_i gives dO.out
        return out, total

    @staticmethod
    @one_thread_backward
    def backward(ctx: Any, dout: Tensor | None, dtotal: Tensor | None):  # type: ignore[override]
        weights, *outs = ctx.saved_tensors
        dlses = torch.zeros_like(weights) if dtotal is None else weights * dtotal
        douts: list[Tensor | None] = [None] * len(outs)
        if dout is not None:
            douts = [(dout * w[..., None]).to(o.dtype) for w, o in zip(weights, outs, strict=True)]
            if not ctx.detach:
                dots = torch.stack([row_dot(dout, o) for o in outs]).to(weights.dtype)
                dlses += weights * (dots - (weights * dots).sum(0))
        return None, *douts, *dlses.unbind(0)
