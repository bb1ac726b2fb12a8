"""Fractional Diffuser (CKQu1/fractional-attn): the fractional graph Laplacian ``L^gamma`` of the
attention graph by a truncated binomial series, and the official output variants (spec DPBN §2).

Orientation follows the official code: ``W[j, i] = exp(<k_j, q_i> * scale)`` on graph edges
``j -> i`` (row j = key / source, column i = query / destination); outputs are row-wise, so token
j aggregates values over its out-neighbours. Per sequence and head (dense ``N x N``, as L^gamma is
dense after a few hops): out-degree ``d``, ``rho = max_j d_j``, ``B = rho I - diag(d) + W`` and
``L^gamma ~ rho^gamma sum_{k<=T} c_k (B / rho)^k`` with ``c_k = prod_{i<=k} (i-1-gamma) / k!``.
The powers are sparse (B) times dense products on the edge list.

Stabilised: ``W = e^c W~`` with c the largest edge score, so ``L^gamma = e^(c gamma) L~^gamma``;
every variant is evaluated exactly from the tilde quantities and c (no overflow where the result
itself is finite).

Shape legend: B batch, H heads, N tokens, d width, E edges, T series terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common.precision import fp32_core
from attnzoo.ops.diffuser.diffusion import check_graph_inputs, edge_scores, resolve_graph
from attnzoo.ops.diffuser.edges import EdgeLayout, edge_matmul

__all__ = [
    "GRAPH_VARIANTS",
    "OFFICIAL_TERMS",
    "TIED_VARIANTS",
    "VARIANTS",
    "diffuser_fractional_attention",
    "series_coefficients",
    "tied_sphere_attention",
]

OFFICIAL_TERMS = {
    "renormfrac": 7,
    "regfrac": 7,
    "detached_regfrac": 7,
    "lnl": 7,
    "unfrac": 6,
    "limitfrac": 6,
    "symlimitfrac": 6,
}
GRAPH_VARIANTS = tuple(OFFICIAL_TERMS)
TIED_VARIANTS = ("l2", "fracdm")
"""Variants on tied queries and keys over every token (no graph, no series): ``l2`` (the official
``L2Attention``) and ``fracdm`` (``FracDMSelfAttention``, the diffusion-maps form)."""
VARIANTS = GRAPH_VARIANTS + TIED_VARIANTS


def series_coefficients(gamma: float, terms: int) -> list[float]:
    """``(-1)^k binom(gamma, k)`` for k = 0..T (divide the k-th by ``rho^k``): 1, -gamma, ..."""
    out, c = [1.0], 1.0
    for k in range(1, terms + 1):
        c *= (k - 1 - gamma) / k
        out.append(c)
    return out


def _rownorm1(x: Tensor) -> Tensor:
    return x / x.abs().sum(-1, keepdim=True).clamp_min(1e-12)


def _fractional_power(
    values: Tensor, rows: Tensor, cols: Tensor, n: int, gamma: float, terms: int, *, batch_rho: bool
) -> Tensor:
    """Dense ``L~^gamma (B, H, N, N)`` from edge weights ``values (B, H, E)`` at ``(rows, cols)``;
    rho is the largest out-degree of each sequence (``batch_rho``: of the whole batch)."""
    deg = values.new_zeros(*values.shape[:2], n).index_add(2, rows, values)  # out-degree
    rho = deg.amax(-1, keepdim=True)
    if batch_rho:
        rho = rho.amax(0, keepdim=True).expand_as(rho)
    rho = torch.where(rho > 0, rho, torch.ones_like(rho))  # a sequence without edges (all padding)
    diag = torch.arange(n, device=values.device)
    all_rows, all_cols = torch.cat([rows, diag]), torch.cat([cols, diag])
    b_values = torch.cat([values, rho - deg], dim=2) / rho  # B / rho, B = rho I - diag(d) + W
    layout = EdgeLayout.build(all_cols, all_rows, n)  # B[row, col]: row = source
    eye = torch.eye(n, dtype=values.dtype, device=values.device).expand(*values.shape[:2], n, n)
    term, acc = eye, eye
    for c in series_coefficients(gamma, terms)[1:]:
        term = edge_matmul(b_values, term, layout)  # (B / rho)^k
        acc = acc + c * term
    return acc * rho[..., None] ** gamma


def tied_sphere_attention(
    q: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    variant: str,
    gamma: float = 0.5,
    zero_pad_rows: bool = True,
) -> Tensor:
    """The fractional-attn variants without a graph: queries ``u = q / |q|`` on the unit sphere serve
    as keys too, and every token attends to every real token of its sequence.

    * ``l2``: logits ``-|u_i - u_j|^2 / sqrt(d)``, softmax (``L2Attention``);
    * ``fracdm``: kernel ``K_ij = (1 + theta_ij / sqrt(pi))^(-(d + gamma))`` with ``theta = arccos(u_i . u_j)``,
      density ``p_j = sum_l exp(|u_j - u_l|)``, two-sided normalisation ``K_ij / (p_i p_j)`` and row
      normalisation (``FracDMSelfAttention``; its constant and ``p_i`` cancel, so the weights are a
      softmax of ``log K_ij - log p_j``). The cosine is kept inside (-1, 1) (the official acos gives
      NaN on rounding past 1, quirk F3) and ``theta_ii = 0`` exactly.

    Args:
        q: ``(B, H, N, d)`` (keys are the same vectors).
        v: ``(B, H, N, dv)``.
        mask: bool ``(B, N)``, True = real token; pads are no keys and return 0.
        variant: ``"l2"`` or ``"fracdm"``.
        gamma: fracdm's exponent offset.
        zero_pad_rows: False keeps the rows of padded queries (attention over the real keys).

    Returns:
        ``(B, H, N, dv)``. Time and memory O(N^2) per head.
    """
    n, d = q.shape[-2], q.shape[-1]
    unit = F.normalize(q, dim=-1)
    dots = unit @ unit.transpose(-1, -2)
    floor = torch.finfo(dots.dtype).min
    if variant == "l2":
        sq = unit.square().sum(-1)
        logits = -(sq[..., :, None] - 2 * dots + sq[..., None, :]) * d**-0.5
    else:
        eye = torch.eye(n, dtype=torch.bool, device=q.device)
        eps = torch.finfo(dots.dtype).eps
        off = torch.where(eye, 0.0, dots)  # no acos / sqrt at the singular diagonal, not even in the backward
        angle = torch.where(eye, 0.0, torch.acos(off.clamp(-1 + eps, 1 - eps)))
        dist = torch.where(eye, 0.0, (2 - 2 * off).clamp_min(eps).sqrt())  # |u_i - u_j| on the sphere
        if mask is not None:
            dist = dist.masked_fill(~mask[:, None, None, :], floor)
        log_density = torch.logsumexp(dist, dim=-1)  # (B, H, N)
        logits = -(d + gamma) * torch.log1p(angle / math.sqrt(math.pi)) - log_density[..., None, :]
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], floor)
    out = torch.softmax(logits, dim=-1) @ v
    return out if mask is None or not zero_pad_rows else out * mask[:, None, :, None].to(out.dtype)


@fp32_core
def diffuser_fractional_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    variant: str = "renormfrac",
    gamma: float = 0.5,
    terms: int | None = None,
    alpha: float = 0.1,
    epsilon: float = 0.8,
    attention_window: int = 64,
    num_rand: int = 64,
    num_glob: int = 64,
    seed: int = 0,
    graph: str = "attnzoo",
    global_tokens: tuple[int, ...] | None = None,
    batch_rho: bool = False,
    detach: bool = False,
    negate_scores: bool = False,
    zero_pad_rows: bool = True,
    scale: float | None = None,
) -> Tensor:
    """Fractional-diffusion attention on the Diffuser graph (the fractional-attn variants).

    With ``Pg = rownorm1(diag(L^g) - L^g)`` (zero diagonal, rows sum to 1):

    * ``renormfrac``: ``(1 - alpha) Pg V + alpha V``;
    * ``regfrac``: ``rownorm1(W - L^g * (1 - G)) V`` (L^g weights on non-edges, G the graph restricted
      to real tokens, so a pad row is ``-V`` of its own token); ``detached_regfrac``:
      ``(1 - alpha)`` of that ``+ alpha V``;
    * ``unfrac``: ``V - L^g V``;
    * ``lnl``: ``epsilon rownorm1(W) V + (1 - epsilon) Pg V``;
    * ``limitfrac`` / ``symlimitfrac``: every row ``sum_i s_i V_i`` with ``s = diag(L^g) / sum diag(L^g)``
      over the sequence's real tokens (``symlimitfrac`` symmetrises W first);
    * ``l2`` / ``fracdm``: no graph and no series, tied queries and keys over all real tokens (k unused;
      :func:`tied_sphere_attention`).

    Intended math by default: gradients reach q, k and v; rho and the limit weights are per
    sequence; stabilised exponent. Official behaviour: ``batch_rho`` (one rho, and one limit vector,
    over the whole batch, padding included, F5), ``detach`` (L^g and, for ``lnl``, the whole output without
    gradient, F4), ``negate_scores`` (``renormfrac`` at the pinned commit uses ``exp(-<k, q>)``),
    ``zero_pad_rows=False`` (the rows of padded queries are kept as the formulas give them, the official
    operator's rows of isolated nodes, F6: ``-V`` for regfrac, ``alpha V`` for renormfrac, ``V - L^g V``
    for unfrac, the limit mix for limitfrac; the official output scramble moves them into real rows).
    Time O(T E N), memory O(T N^2) per head.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool ``(B, N)``, True = real token; pads take no edge and return 0 (unless
            ``zero_pad_rows`` is False).
        causal: not supported; True raises.
        variant: one of :data:`VARIANTS`.
        gamma: in (0, 1). terms: T (default: the official count of the variant, 6 or 7).
        alpha, epsilon: teleport and LNL mixing weights (official 0.1 and 0.8).
        attention_window .. global_tokens: the graph, as :func:`diffuser_attention`.
        scale: score scale, default ``d ** -0.5`` (the official query scaling).

    Returns:
        ``(B, H, N, d)``.

    Raises:
        ValueError: ``causal``, an unknown variant, gamma outside (0, 1).

    Reference: :func:`attnzoo.ops.diffuser.naive_diffuser_fractional_attention`.
    """
    mask = check_graph_inputs(q, k, v, mask, causal, "diffuser_fractional")
    b, h, n, _ = q.shape
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    if b == 0 or n == 0:
        return v.clone()
    if variant in TIED_VARIANTS:
        return tied_sphere_attention(q, v, mask=mask, variant=variant, gamma=gamma, zero_pad_rows=zero_pad_rows)
    terms = OFFICIAL_TERMS[variant] if terms is None else terms
    g = resolve_graph(n, graph, attention_window, num_rand, num_glob, seed, global_tokens)
    src, dst, scores = edge_scores(q, k, g, scale)  # <k_src, q_dst>
    if negate_scores:
        scores = -scores
    if mask is not None:
        scores = scores.masked_fill(~(mask[:, src] & mask[:, dst])[:, None, :], float("-inf"))
    peak = scores.detach().amax(-1, keepdim=True)  # (B, H, 1), the stabiliser c
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    if batch_rho:
        peak = peak.amax(0, keepdim=True).expand_as(peak)
    w = torch.exp(scores - peak)  # W~ on the edges, (B, H, E)
    if detach:  # official: the weights and L^g carry no gradient (only V does)
        w = w.detach()
    rows, cols = src, dst
    if variant == "symlimitfrac":
        w, rows, cols = torch.cat([w, w], 2) / 2, torch.cat([src, dst]), torch.cat([dst, src])
    lg = _fractional_power(w, rows, cols, n, gamma, terms, batch_rho=batch_rho)
    c = peak[..., None]  # (B, H, 1, 1): W = e^c W~, L^g = e^(c g) L~^g
    real = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
    keep = (real if zero_pad_rows else torch.ones_like(real))[:, None, :, None].to(v.dtype)
    if variant in ("limitfrac", "symlimitfrac"):
        diag = lg.diagonal(dim1=-2, dim2=-1)  # (B, H, N); official batch mode counts padding too
        diag = diag if batch_rho else diag * real[:, None, :].to(lg.dtype)
        if batch_rho:
            weights = diag / diag.sum((0, 2), keepdim=True).clamp_min(torch.finfo(diag.dtype).tiny)
            mixed = torch.einsum("bhn,bhnd->hd", weights, v)[None, :, None, :]
        else:
            weights = diag / diag.sum(-1, keepdim=True).clamp_min(torch.finfo(diag.dtype).tiny)
            mixed = torch.einsum("bhn,bhnd->bhd", weights, v)[:, :, None, :]
        return mixed.expand_as(v) * keep
    if variant == "unfrac":
        return (v - torch.exp(c * gamma) * (lg @ v)) * keep
    dense_w = w.new_zeros(b, h, n * n).index_add(2, src * n + dst, w).view(b, h, n, n)
    if variant in ("regfrac", "detached_regfrac"):
        edges = torch.zeros(n, n, dtype=torch.bool, device=q.device)
        edges[src, dst] = True
        edges = edges & real[:, None, :, None] & real[:, None, None, :]  # (B, 1, N, N): the official masked G
        reg = _rownorm1(dense_w - torch.exp(c * (gamma - 1)) * lg.masked_fill(edges, 0.0)) @ v
        out = reg if variant == "regfrac" else (1 - alpha) * reg + alpha * v
        return out * keep
    frac = _rownorm1(torch.diag_embed(lg.diagonal(dim1=-2, dim2=-1)) - lg) @ v
    if variant == "renormfrac":
        return ((1 - alpha) * frac + alpha * v) * keep
    lnl = epsilon * (_rownorm1(dense_w) @ v) + (1 - epsilon) * frac
    return (lnl.detach() if detach else lnl) * keep
