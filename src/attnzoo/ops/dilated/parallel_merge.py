"""Mixing the crossing segments into the engine's result, in place, with an exact hand-written backward.

On each rank the sparse engine computes the branches' segments inside the chunk (``out, lse``:
``(B, H, n, dv)``, ``(B, H, n)``) and the crossing segments give partial results on some rows
(``parts``). The mechanism's output is their log-sum-exp mixture, which differs from the engine's
output only on U, the rows some crossing segment covers (one in ``r`` of the chunk's rows per
crossing branch). :class:`ParallelMixture` writes the mixed rows into the engine's output buffer,
so a rank holds one output-sized tensor as on one device (the engine saves its output for its
backward anyway), and differentiates the mixture by hand on U:

    y = sum_j w_j o_j,   w_j = exp(l_j - L),   L = logsumexp_j l_j
    dL/do_j = w_j dy,    dL/dl_j = w_j (dy . o_j - dy . y)   (0 with detached weights)

Its backward then runs the inner graph (exchange, crossing segments, engine) with those gradients,
after putting the engine's own values back on U for the engine's backward (and the mixed ones
again afterwards): the output the caller holds is the same before and after the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Mixture", "ParallelMixture", "Part"]

Part = tuple[Tensor, Tensor, Tensor]
"""One crossing segment: flat ``(head * n + row)`` indices ``(M,)``, output ``(B, M, dv)``, lse ``(B, M)``."""


@dataclass
class Mixture:
    """The mixture on U: ``heads, rows`` ``(U,)`` index U in ``(B, H, n, ...)`` tensors; per part, its
    rows' places in U; the engine's rows ``engine_out (B, U, dv)`` and the mixed ones ``mixed``;
    weights ``engine_weight (B, U)`` and per part ``(B, M)``."""

    heads: Tensor
    rows: Tensor
    places: list[Tensor]
    engine_out: Tensor
    mixed: Tensor
    engine_weight: Tensor
    weights: list[Tensor]

    @classmethod
    def build(cls, out: Tensor, lse: Tensor, parts: list[Part]) -> Mixture:
        """Mix (no autograd) the engine's ``out (B, H, n, dv)``, ``lse (B, H, n)`` with ``parts`` on U."""
        n = out.shape[2]
        flat = torch.unique(torch.cat([out.new_zeros(0, dtype=torch.long)] + [index for index, _, _ in parts]))  # U
        heads, rows = flat.div(n, rounding_mode="floor"), flat.remainder(n)
        places = [torch.searchsorted(flat, index) for index, _, _ in parts]
        engine_out, engine_lse = out[:, heads, rows], lse[:, heads, rows]
        lses = [engine_lse]
        for at, (_, _, part_lse) in zip(places, parts, strict=True):
            lses.append(engine_lse.new_full(engine_lse.shape, float("-inf")).index_copy_(1, at, part_lse))
        total = torch.logsumexp(torch.stack(lses), 0)
        total = total.masked_fill(torch.isinf(total), 0.0)  # rows without any key: every weight is 0
        engine_weight = torch.exp(engine_lse - total)
        mixed = engine_out * engine_weight[..., None].to(out.dtype)
        weights = []
        for at, (_, part_out, part_lse) in zip(places, parts, strict=True):
            weights.append(torch.exp(part_lse - total[:, at]))
            mixed.index_add_(1, at, part_out * weights[-1][..., None].to(out.dtype))
        return cls(heads, rows, places, engine_out, mixed, engine_weight, weights)

    def write(self, out: Tensor, rows: Tensor) -> None:
        """Put ``rows (B, U, dv)`` into U of ``out (B, H, n, dv)``, in place."""
        out[:, self.heads, self.rows] = rows

    def grads(
        self, dy: Tensor, parts: list[Part], detach: bool
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor | None]]:
        """Gradients of the engine's output ``(B, H, n, dv)`` and the rows ``(B, U, dv)`` its backward
        should see as its output; of each part's output and lse (None if ``detach``); from ``dy``.

        The engine's lse gradient ``w (dy . o - dy . y)`` is folded into those rows: attention's
        backward needs its output only through ``D = rowsum(dO * O)`` (FlashAttention's backward, and
        every kernel of :mod:`attnzoo.sparse.kernels`), and with ``dO = w dy`` the rows
        ``O' = o - (dy . (o - y) / |dy|^2) dy`` give ``D' = dO . o - w dy . (o - y)`` (``|O' - o| <=
        |o - y|``; rows with ``dy = 0`` have no lse gradient). The engine then runs without one: its
        fused CPU kernel has no lse input and would copy every chunk to append a column for it.
        """
        dy_u = dy[:, self.heads, self.rows]
        d_out = dy.clone(memory_format=torch.contiguous_format)  # rows outside U pass unchanged
        d_out[:, self.heads, self.rows] = dy_u * self.engine_weight[..., None].to(dy.dtype)
        d_parts = [dy_u[:, at] * w[..., None].to(dy.dtype) for at, w in zip(self.places, self.weights, strict=True)]
        if detach:
            return d_out, self.engine_out, d_parts, [None] * len(parts)
        dy32 = dy_u.to(torch.promote_types(dy.dtype, torch.float32))
        seen = (dy32 * self.mixed).sum(-1)  # dy . y on U
        norm = (dy32 * dy32).sum(-1)
        shift = ((dy32 * self.engine_out).sum(-1) - seen) / norm.masked_fill(norm == 0, 1.0)
        engine_rows = (self.engine_out - shift[..., None] * dy32).to(self.engine_out.dtype)
        d_part_lses: list[Tensor | None] = [
            w * ((dy32[:, at] * part_out).sum(-1) - seen[:, at])
            for at, w, (_, part_out, _) in zip(self.places, self.weights, parts, strict=True)
        ]
        return d_out, engine_rows, d_parts, d_part_lses


Pieces = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, list[Part]]]
"""``(q, k, v) -> (engine out, engine lse, crossing parts)``, differentiable."""


class ParallelMixture(torch.autograd.Function):
    """``pieces(q, k, v)`` mixed on U into the engine's output buffer (returned as a detached alias).

    The inner graph is kept from the forward (no recomputation); the backward differentiates the
    mixture (:meth:`Mixture.grads`) and runs the inner graph once, so the engine's backward (the
    memory peak) holds no second output-sized tensor. The output shares its version counter with
    the engine's saved output: modifying it in place makes the backward raise, as it should. The
    inner graph is freed by the backward pass (no second backward through the same output).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, pieces: Pieces, detach: bool):  # type: ignore[override]
        leaves = tuple(t.detach().requires_grad_() for t in (q, k, v))
        with torch.enable_grad():
            out, lse, parts = pieces(*leaves)
        plain = [(index, o.detach(), l.detach()) for index, o, l in parts]
        mixture = Mixture.build(out.detach(), lse.detach(), plain)
        mixture.write(out.data, mixture.mixed)  # .data: not an in-place change autograd should see
        ctx.leaves, ctx.out, ctx.parts, ctx.plain, ctx.mixture = leaves, out, parts, plain, mixture
        ctx.detach = detach
        return out.detach()

    @staticmethod
    def backward(ctx: Any, dy: Tensor):  # type: ignore[override]
        mixture, out = ctx.mixture, ctx.out
        d_out, engine_rows, d_parts, d_part_lses = mixture.grads(dy, ctx.plain, ctx.detach)
        pairs = [(out, d_out)]
        for (_, part_out, part_lse), d_o, d_l in zip(ctx.parts, d_parts, d_part_lses, strict=True):
            pairs += [(part_out, d_o), (part_lse, d_l)]
        tensors, grads = zip(*[(t, g) for t, g in pairs if g is not None and t.requires_grad], strict=True)
        mixture.write(out.data, engine_rows)  # what the engine's backward reads as its output on U
        try:
            found = torch.autograd.grad(tensors, ctx.leaves, grads, allow_unused=True)
        finally:
            mixture.write(out.data, mixture.mixed)
        grads_qkv = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(found, ctx.leaves, strict=True))
        return (*grads_qkv, None, None)
