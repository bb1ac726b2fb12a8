"""Diffuser's graph split into a sparse remainder and the dense rows and columns of its global tokens.

A global token g is linked both ways to every token, so its row ``A[g, :]`` and its column ``A[:, g]``
are dense: about 45% of the edges at the defaults (2 G N of 286 N at N = 16384, G = 64). Stored as dense
blocks they run as GEMMs instead of sparse kernels; only the rest (local and random edges between other
tokens) stays in CSR form.

Slot order of a ``values (B, H, S)`` tensor: the rest's edges (sorted by destination, then source), the
rows block ``(G, N)`` (``A[g_i, s]``), the columns block ``(N, G)`` (``A[t, g_j]``), each row-major. An
entry ``A[g_i, g_j]`` sits in both blocks; its columns-block slot is a *phantom*: every product ignores
it, sampled products write 0 there, and a softmax over slots must give it no weight (-inf score).

Shape legend: B batch, H heads, N nodes, d width, G global tokens, S slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.ops.diffuser.edges import EdgeLayout

__all__ = ["GlobalSplitLayout"]


@dataclass(frozen=True)
class GlobalSplitLayout:
    """A graph's edges as a sparse remainder (``rest``) plus the dense rows and columns of ``globals``.

    Attributes:
        num_nodes: N.
        globals: ``(G,)`` long, sorted: tokens whose whole row and column are edges.
        rest: the other edges (neither end global) as an :class:`EdgeLayout`, in CSR order.
        src, dst: ``(S,)`` long, each slot's edge (``src -> dst``).
        phantom: ``(G * G,)`` long, the slots that duplicate a rows-block entry.
    """

    num_nodes: int
    globals: Tensor
    rest: EdgeLayout
    src: Tensor
    dst: Tensor
    phantom: Tensor

    @property
    def num_edges(self) -> int:
        """S, the slots (edges plus ``G * G`` phantoms)."""
        return int(self.src.numel())

    @classmethod
    def build(cls, src: Tensor, dst: Tensor, n: int, globals_: Tensor) -> GlobalSplitLayout:
        """From distinct edges ``src, dst (E,)`` sorted by ``(dst, src)`` and the global tokens ``(G,)``.

        Raises:
            ValueError: a global token whose row or column is not complete.
        """
        glob = torch.sort(globals_.long()).values
        is_global = torch.zeros(n, dtype=torch.bool)
        is_global[glob] = True
        keep = ~(is_global[src] | is_global[dst])
        g, every = glob.numel(), torch.arange(n)
        expected = int(keep.sum()) + 2 * g * n - g * g
        if expected != src.numel():
            found = src.numel()
            raise ValueError(
                f"the global tokens' rows and columns are not all edges ({found} edges, {expected} expected)"
            )
        rest_src, rest_dst = src[keep], dst[keep]
        slot_src = torch.cat([rest_src, every.repeat(g), glob.repeat(n)])
        slot_dst = torch.cat([rest_dst, glob.repeat_interleave(n), every.repeat_interleave(g)])
        cols_start = rest_src.numel() + g * n
        phantom = cols_start + (glob[:, None] * g + torch.arange(g)[None, :]).reshape(-1)
        return cls(n, glob, EdgeLayout.build(rest_src, rest_dst, n), slot_src, slot_dst, phantom)

    def to(self, device: torch.device) -> GlobalSplitLayout:
        """The layout on ``device`` (itself when already there)."""
        if self.globals.device == device:
            return self
        moved = (t.to(device) for t in (self.globals, self.src, self.dst, self.phantom))
        glob, src, dst, phantom = moved
        return GlobalSplitLayout(self.num_nodes, glob, self.rest.to(device), src, dst, phantom)

    def _parts(self, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``values (B, H, S)`` -> views ``rest (B, H, E_rest)``, ``rows (B, H, G, N)``, ``cols (B, H, N, G)``."""
        n, g, start = self.num_nodes, self.globals.numel(), self.rest.num_edges
        rows = values[..., start : start + g * n].unflatten(-1, (g, n))
        return values[..., :start], rows, values[..., start + g * n :].unflatten(-1, (n, g))

    def sampled(
        self, a: Tensor, b: Tensor, *, alpha: float = 1.0, out: Tensor | None = None, accumulate: bool = False
    ) -> Tensor:
        """``alpha <a[dst], b[src]>`` per slot: ``a, b (B, H, N, d) -> (B, H, S)`` (phantoms 0), written into
        ``out`` (added to it when ``accumulate``) or a new tensor."""
        out = a.new_empty(*a.shape[:2], self.num_edges) if out is None else out
        rest, rows, cols = self._parts(out)
        self.rest.sampled(a, b, alpha=alpha, out=rest, accumulate=accumulate)
        a_glob, b_glob = a.index_select(2, self.globals), b.index_select(2, self.globals)
        beta = 1.0 if accumulate else 0.0  # beta = 0 ignores the (unset) target
        for i in range(a.shape[0]):
            for h in range(a.shape[1]):
                rows[i, h].addmm_(a_glob[i, h], b[i, h].mT, beta=beta, alpha=alpha)
                cols[i, h].addmm_(a[i, h], b_glob[i, h].mT, beta=beta, alpha=alpha)
                cols[i, h].index_fill_(0, self.globals, 0.0)
        return out

    def product(self, values: Tensor, x: Tensor) -> Tensor:
        """``A x``: ``values (B, H, S)``, ``x (B, H, N, d) -> (B, H, N, d)``."""
        rest, rows, cols = self._parts(values)
        out = self.rest.product(rest, x)  # zero on the global rows
        x_glob = x.index_select(2, self.globals)
        for i in range(x.shape[0]):
            for h in range(x.shape[1]):
                out[i, h].addmm_(cols[i, h], x_glob[i, h])  # phantoms land on the global rows ...
                out[i, h].index_copy_(0, self.globals, rows[i, h] @ x[i, h])  # ... which this overwrites
        return out

    def transposed(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``values`` made ready for :meth:`product_t` (the rest in by-source order)."""
        rest, _, _ = self._parts(values)
        return self.rest.transposed(rest), values

    def product_t(self, transposed: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """``A^T x`` from :meth:`transposed` values: ``x (B, H, N, d) -> (B, H, N, d)``."""
        rest_t, values = transposed
        _, rows, cols = self._parts(values)
        out = self.rest.product_t(rest_t, x)  # zero on the global rows
        x_glob = x.index_select(2, self.globals)
        for i in range(x.shape[0]):
            for h in range(x.shape[1]):
                out[i, h].addmm_(rows[i, h].mT, x_glob[i, h])
                phantoms = cols[i, h].index_select(0, self.globals)  # (G, G)
                into_globals = torch.addmm(cols[i, h].mT @ x[i, h], phantoms.mT, x_glob[i, h], alpha=-1.0)
                out[i, h].index_add_(0, self.globals, into_globals)
        return out
