"""Diffuser's sparse attention graph: local blocks, random edges, global tokens, as a CSR edge list.

An edge ``s -> t`` lets query t read key s (the official ``Adj[s, t] = 1``). Graphs are built once
per argument tuple (cached) on the CPU and never as an N x N matrix outside :meth:`DiffuserGraph.to_dense`
and the official replay (which, like the official code, draws from an L x L index range).

Shape legend: N tokens, E edges, R random keys per query, L the graph length of the official code.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnzoo.ops.diffuser.edges import EdgeLayout
from attnzoo.ops.diffuser.split import GlobalSplitLayout

__all__ = ["DiffuserGraph", "diffuser_graph", "official_graph"]

OFFICIAL_LENGTH = 4096
"""The official graph is built once for L = 4096 tokens and cropped to each input length."""


@dataclass(frozen=True)
class DiffuserGraph:
    """Directed edges ``src -> dst`` (key -> query) sorted by ``dst`` then ``src``, each once.

    Attributes:
        num_nodes: N.
        src, dst: ``(E,)`` long.
        globals: ``(G,)`` long, the global tokens (whole row and column linked).
    """

    num_nodes: int
    src: Tensor
    dst: Tensor
    globals: Tensor

    @property
    def num_edges(self) -> int:
        """E."""
        return int(self.src.numel())

    @functools.cached_property
    def layout(self) -> EdgeLayout:
        """The edges in CSR form both ways (built on first use, then kept with the cached graph)."""
        return EdgeLayout.build(self.src, self.dst, self.num_nodes)

    @functools.cached_property
    def split(self) -> GlobalSplitLayout:
        """The edges as a sparse remainder plus the global tokens' dense rows and columns (built on first use)."""
        return GlobalSplitLayout.build(self.src, self.dst, self.num_nodes, self.globals)

    def to_dense(self) -> Tensor:
        """``(N, N)`` bool, entry ``[t, s]`` True when query t reads key s (tests and figures only)."""
        dense = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        dense[self.dst, self.src] = True
        return dense

    @classmethod
    def from_codes(cls, n: int, codes: Tensor, globals_: Tensor) -> DiffuserGraph:
        """Deduplicate flat codes ``dst * N + src`` into a sorted edge list."""
        codes = torch.unique(codes)
        return cls(n, codes % n, codes // n, globals_)


def _local_codes(n: int, window: int) -> Tensor:
    """Official overlapping blocks: ``Adj[i w/2 : i w/2 + w]^2 = 1``, i.e. token t with
    ``m = t // (w/2)`` is linked both ways to ``[(m-1) w/2, (m+2) w/2)`` (clipped)."""
    half = max(1, window // 2)
    t = torch.arange(n)
    m = t // half
    lo = ((m - 1) * half).clamp_min(0)
    hi = ((m + 2) * half).clamp_max(n)
    width = 3 * half
    s = lo[:, None] + torch.arange(width)[None, :]
    keep = s < hi[:, None]
    return (t[:, None] * n + s)[keep]


def _global_codes(n: int, globals_: Tensor) -> Tensor:
    """Whole rows and columns of the global tokens."""
    every = torch.arange(n)
    rows = globals_[:, None] * n + every[None, :]
    cols = every[None, :] * n + globals_[:, None]
    return torch.cat([rows.reshape(-1), cols.reshape(-1)])


@functools.lru_cache(maxsize=16)
def diffuser_graph(
    n: int, window: int = 64, num_rand: int = 64, num_glob: int = 64, seed: int = 0, graph_len: int = OFFICIAL_LENGTH
) -> DiffuserGraph:
    """attnzoo's Diffuser graph for N tokens: the official structure, any N, crop-consistent.

    * local: the official overlapping blocks of ``window`` (see :func:`_local_codes`);
    * random: query t reads ``num_rand`` keys drawn uniformly from ``[0, max(N, graph_len))`` by a
      seeded generator, keys past N dropped (so, like the official crop of its 4096-token graph,
      a query sees about ``num_rand * N / graph_len`` random keys while ``N <= graph_len``);
    * global: ``num_glob`` positions drawn from ``[window, max(N, graph_len))`` (never token 0, as
      in the official code), kept when ``< N``; their whole row and column.

    For ``N <= graph_len`` the graph of N tokens is the top-left crop of the graph of any longer
    length, so trailing padding changes nothing on the real tokens.
    """
    span = max(n, graph_len)
    gen = torch.Generator().manual_seed(seed)
    rows = math.ceil(max(n, 1) / graph_len) * graph_len
    draws = torch.cat([torch.rand(graph_len, num_rand, generator=gen) for _ in range(rows // graph_len)])[:n]
    keys = (draws * span).long()
    t = torch.arange(n)[:, None].expand_as(keys)
    keep = keys < n
    random_codes = (t * n + keys)[keep]
    glob_gen = torch.Generator().manual_seed(seed + 1)
    choices = torch.randperm(max(span - window, 0), generator=glob_gen)[:num_glob] + window
    globals_ = torch.sort(choices[choices < n]).values
    codes = torch.cat([_local_codes(n, window), random_codes, _global_codes(n, globals_)])
    return DiffuserGraph.from_codes(n, codes, globals_)


@functools.lru_cache(maxsize=8)
def _official_full(window: int, num_rand: int, num_glob: int) -> tuple[np.ndarray, np.ndarray]:
    """The official draws at L = 4096: random flat indices and global positions (numpy legacy RNG)."""
    length = OFFICIAL_LENGTH
    state = np.random.get_state()
    try:
        np.random.seed(0)
        flat = np.random.choice(length * length, length * num_rand, replace=False)
        glob = np.random.choice(range(window, length), num_glob, replace=False)
    finally:
        np.random.set_state(state)
    return flat, glob


def official_graph(n: int, window: int = 64, num_rand: int = 64, num_glob: int = 64) -> DiffuserGraph:
    """The official Diffuser graph (graphtrainer ``_create_adj_mat``, spec DPBN §1.2) cropped to N.

    Replays ``np.random.seed(0)``, ``choice(L*L, L*num_rand, replace=False)`` (edge ``f mod L -> f div L``),
    then ``choice(range(w, L), num_glob, replace=False)`` for the global rows and columns, with
    L = 4096, and keeps ``Adj[:N, :N]``. The global numpy RNG state is restored afterwards.

    Raises:
        ValueError: N > 4096 (the official graph has 4096 nodes).
    """
    if n > OFFICIAL_LENGTH:
        raise ValueError(f"the official Diffuser graph has {OFFICIAL_LENGTH} nodes; got N={n}")
    flat, glob = _official_full(window, num_rand, num_glob)
    src, dst = flat % OFFICIAL_LENGTH, flat // OFFICIAL_LENGTH
    inside = (src < n) & (dst < n)
    random_codes = torch.from_numpy(dst[inside] * n + src[inside])
    local = _official_local(n, window)
    globals_ = torch.from_numpy(np.sort(glob[glob < n])).long()
    codes = torch.cat([local, random_codes.long(), _global_codes(n, globals_)])
    return DiffuserGraph.from_codes(n, codes, globals_)


def _official_local(n: int, window: int) -> Tensor:
    """The official local loop ``for i in range(L // (w/2) - 1): Adj[i w/2 : i w/2 + w]^2 = 1``, cropped."""
    half = window // 2
    starts = torch.arange(OFFICIAL_LENGTH // half - 1) * half
    starts = starts[starts < n]
    a = starts[:, None] + torch.arange(window)[None, :]
    pairs = (a[:, :, None] * n + a[:, None, :]).reshape(len(starts), -1)
    ok = ((a[:, :, None] < n) & (a[:, None, :] < n)).reshape(len(starts), -1)
    return pairs[ok]
