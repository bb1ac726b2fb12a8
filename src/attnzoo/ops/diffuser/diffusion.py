"""Diffuser attention: edge softmax on the sparse graph, then multi-hop diffusion (the fast path)."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.common.precision import fp32_core
from attnzoo.ops.diffuser.edges import edge_diffusion, edge_dots
from attnzoo.ops.diffuser.graph import DiffuserGraph, _global_codes, diffuser_graph, official_graph

__all__ = ["GRAPHS", "check_graph_inputs", "diffuser_attention", "edge_scores", "edge_softmax", "resolve_graph"]

GRAPHS = ("attnzoo", "official")


@functools.lru_cache(maxsize=16)
def resolve_graph(
    n: int,
    graph: str = "attnzoo",
    window: int = 64,
    num_rand: int = 64,
    num_glob: int = 64,
    seed: int = 0,
    global_tokens: tuple[int, ...] | None = None,
) -> DiffuserGraph:
    """The graph of N tokens (``graph="official"`` replays the official one; see :mod:`.graph`).

    ``global_tokens`` replaces the drawn global tokens by these positions (those ``< N``).

    Raises:
        ValueError: an unknown graph name, a global token position < 0.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}; got {graph!r}")
    glob = num_glob if global_tokens is None else 0
    if graph == "official":
        base = official_graph(n, window, num_rand, glob)
    else:
        base = diffuser_graph(n, window, num_rand, glob, seed)
    if global_tokens is None:
        return base
    if any(t < 0 for t in global_tokens):
        raise ValueError(f"global_tokens must be positions >= 0, got {global_tokens}")
    chosen = torch.tensor(sorted({t for t in global_tokens if t < n}), dtype=torch.long)
    codes = torch.cat([base.dst * n + base.src, _global_codes(n, chosen)])
    return DiffuserGraph.from_codes(n, codes, chosen)


def check_graph_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, name: str) -> Tensor | None:
    """The input checks of the graph mechanisms; returns the validated padding mask.

    Raises:
        ValueError: ``causal`` (random and global edges point both ways), bad shapes.
    """
    check_qkv(q, k, v, cross=False)
    mask = check_padding_mask(mask, q.shape[0], q.shape[2], q.device)
    if causal:
        raise ValueError(f"{name} cannot be causal: its random and global edges point both ways")
    return mask


def edge_scores(q: Tensor, k: Tensor, graph: DiffuserGraph, scale: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(src, dst, scores)``: the graph's edges on q's device and ``<q_dst, k_src> * scale`` ``(B, H, E)``
    (default scale ``d ** -0.5``)."""
    src, dst = graph.src.to(q.device), graph.dst.to(q.device)
    return src, dst, edge_dots(q, k, graph.layout, q.shape[-1] ** -0.5 if scale is None else scale)


def edge_softmax(scores: Tensor, dst: Tensor, n: int) -> Tensor:
    """Softmax of ``scores (B, H, E)`` over the in-edges of each destination (``-inf`` = no edge);
    destinations without a finite in-edge get all-zero weights."""
    return _EdgeSoftmax.apply(scores, dst, n)


class _EdgeSoftmax(torch.autograd.Function):
    """:func:`edge_softmax` saving only its result: ``ds = w * (g - sum_row(w * g))``. (Composed from autograd
    ops it keeps several E-sized tensors and makes as many again in its backward; E is about 290 N.)"""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, dst: Tensor, n: int) -> Tensor:  # type: ignore[override]
        rows, index = (*scores.shape[:2], n), dst.expand_as(scores)  # gather, not index_select: 4x faster on dim 2
        peak = scores.new_full(rows, float("-inf")).scatter_reduce_(2, index, scores, "amax", include_self=True)
        peak.masked_fill_(torch.isinf(peak), 0.0)
        weights = (scores - peak.gather(2, index)).exp_()
        total = weights.new_zeros(rows).index_add_(2, dst, weights)
        weights.div_(total.masked_fill_(total == 0, 1.0).gather(2, index))
        ctx.save_for_backward(weights, dst)
        ctx.n = n
        return weights

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        weights, dst = ctx.saved_tensors
        product = weights * grad
        per_row = product.new_zeros(*weights.shape[:2], ctx.n).index_add_(2, dst, product)
        return product.addcmul_(weights, per_row.gather(2, dst.expand_as(weights)), value=-1.0), None, None


@fp32_core
def diffuser_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    attention_window: int = 64,
    num_rand: int = 64,
    num_glob: int = 64,
    seed: int = 0,
    graph: str = "attnzoo",
    global_tokens: tuple[int, ...] | None = None,
    hops: int = 5,
    alpha: float = 0.1,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Diffuser (Feng et al., AAAI 2023; asFeng/Diffuser ``DiffuserSelfAttention``).

    On the sparse graph (local blocks, random edges, global tokens; see :func:`resolve_graph`) each
    query t takes an edge softmax over its in-neighbours s of ``<q_t, k_s> * scale`` (A, rows sum to
    1), then K = ``hops`` steps of personalised-PageRank diffusion ``h <- (1 - alpha) A h + alpha V``
    from ``h = V``: ``out = sum_{k<K} alpha (1-alpha)^k A^k V + (1-alpha)^K A^K V``. Time
    O(K E d), memory O(E + K N d) per head (E = edges, about 150 N at the defaults).

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool ``(B, N)``, True = real token; pad keys take no weight and pad rows return 0
            (the official code gives pad queries an average of their neighbours, quirk D2).
        causal: not supported (random and global edges point both ways); True raises.
        attention_window, num_rand, num_glob, seed, graph, global_tokens: the graph (official names).
        hops, alpha: K and the teleport probability (official: 5 and 0.1, hard-coded).
        dropout_p: dropout on the edge weights (one mask for all hops, as the official code).

    Returns:
        ``(B, H, N, d)``, computed in fp32 at least with autocast off (the sparse kernels have no half
        precision), in the inputs' dtype or autocast's (:func:`attnzoo.ops.common.precision.fp32_core`).

    Raises:
        ValueError: ``causal``, an unknown graph, an official graph longer than 4096.

    Reference: :func:`attnzoo.ops.diffuser.naive_diffuser_attention`.
    """
    mask = check_graph_inputs(q, k, v, mask, causal, "diffuser")
    b, _, n, _ = q.shape
    if b == 0 or n == 0:
        return v.clone()
    split = resolve_graph(n, graph, attention_window, num_rand, num_glob, seed, global_tokens).split.to(q.device)
    scores = edge_dots(q, k, split, q.shape[-1] ** -0.5 if scale is None else scale)
    scores = scores.index_fill_(-1, split.phantom, float("-inf"))  # slots that duplicate an edge
    if mask is not None:
        scores = scores.masked_fill_(~mask[:, split.src][:, None, :], float("-inf"))
    weights = edge_softmax(scores, split.dst, n)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    h = edge_diffusion(weights, v, split, hops, alpha)
    return h if mask is None else h * mask[:, None, :, None].to(h.dtype)
