"""Dense reference for Diffuser: the N x N edge-softmax matrix A and the closed form sum_k c_k A^k V."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnzoo.ops.diffuser.diffusion import resolve_graph

__all__ = ["diffusion_coefficients", "naive_diffuser_attention"]


def diffusion_coefficients(hops: int, alpha: float) -> list[float]:
    """``c_k = alpha (1 - alpha)^k`` for k < K and ``c_K = (1 - alpha)^K`` (mass left on A^K)."""
    return [alpha * (1 - alpha) ** i for i in range(hops)] + [(1 - alpha) ** hops]


def naive_diffuser_attention(
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
) -> Tensor:
    """Dense O(K N^3) Diffuser with the signature of :func:`diffuser_attention` (tests only):
    ``A = softmax`` of the masked dense scores over each row's graph neighbours, then the closed
    form ``sum_k c_k A^k V`` with explicit matrix powers."""
    if causal:
        raise ValueError("diffuser cannot be causal: its random and global edges point both ways")
    n = q.shape[-2]
    allowed = resolve_graph(n, graph, attention_window, num_rand, num_glob, seed, global_tokens).to_dense().to(q.device)
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    s = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2) * s).masked_fill(~allowed, float("-inf"))
    a = torch.softmax(scores, -1).nan_to_num(0.0)
    out = torch.zeros_like(v)
    power = torch.eye(n, dtype=v.dtype, device=v.device).expand_as(a)
    for c in diffusion_coefficients(hops, alpha):
        out = out + c * (power @ v)
        power = power @ a
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)


def naive_diffuser_fractional_attention(
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
    """Dense fractional Diffuser with the signature of :func:`diffuser_fractional_attention` (tests only):
    ``W = exp(s k q^T) * G`` per sequence (no stabiliser), ``L = diag(W 1) - W``, ``B = rho I - L``,
    ``L^g = rho^g sum_k (-1)^k binom(g, k) (B / rho)^k`` by repeated dense products, then the variant."""
    if causal:
        raise ValueError("diffuser_fractional cannot be causal: its random and global edges point both ways")
    if variant in ("l2", "fracdm"):
        return _naive_tied(q, v, mask, variant, gamma, zero_pad_rows)
    default_terms = {"unfrac": 6, "limitfrac": 6, "symlimitfrac": 6}
    terms = default_terms.get(variant, 7) if terms is None else terms
    b, _, n, d = q.shape
    edges = resolve_graph(n, graph, attention_window, num_rand, num_glob, seed, global_tokens).to_dense().T  # [j, i]
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    s = d**-0.5 if scale is None else scale
    scores = (k @ q.transpose(-1, -2)) * s * (-1 if negate_scores else 1)  # [j, i] = <k_j, q_i>
    allowed = edges[None, None] & real[:, None, :, None] & real[:, None, None, :]
    w = torch.exp(scores) * allowed
    if variant == "symlimitfrac":
        w = (w + w.transpose(-1, -2)) / 2
    lap = torch.diag_embed(w.sum(-1)) - w
    rho = w.sum(-1).amax(-1)[..., None, None]  # (B, H, 1, 1)
    if batch_rho:
        rho = rho.amax(0, keepdim=True)
    eye = torch.eye(n, dtype=q.dtype)
    bmat = rho * eye - lap
    lg, power, coef = eye.expand_as(w).clone(), eye.expand_as(w).clone(), 1.0
    for i in range(1, terms + 1):
        coef *= (i - 1 - gamma) / i
        power = power @ (bmat / rho)
        lg = lg + coef * power
    lg = lg * rho**gamma
    keep = real[:, None, :, None].to(v.dtype) if zero_pad_rows else torch.ones_like(v[..., :1])

    def rownorm1(x: Tensor) -> Tensor:
        return x / x.abs().sum(-1, keepdim=True).clamp_min(1e-12)

    if variant in ("limitfrac", "symlimitfrac"):
        diag = lg.diagonal(dim1=-2, dim2=-1) * (True if batch_rho else real[:, None, :])
        total = diag.sum((0, 2), keepdim=True) if batch_rho else diag.sum(-1, keepdim=True)
        weights = diag / total
        if batch_rho:
            return torch.einsum("bhn,bhnd->hd", weights, v)[None, :, None, :].expand_as(v) * keep
        return torch.einsum("bhn,bhnd->bhd", weights, v)[:, :, None, :].expand_as(v) * keep
    if variant == "unfrac":
        return (v - lg @ v) * keep
    if variant in ("regfrac", "detached_regfrac"):
        reg = rownorm1(w - lg * ~allowed) @ v
        return (reg if variant == "regfrac" else (1 - alpha) * reg + alpha * v) * keep
    frac = rownorm1(torch.diag_embed(lg.diagonal(dim1=-2, dim2=-1)) - lg) @ v
    if variant == "renormfrac":
        return ((1 - alpha) * frac + alpha * v) * keep
    return (epsilon * (rownorm1(w) @ v) + (1 - epsilon) * frac) * keep


def _naive_tied(q: Tensor, v: Tensor, mask: Tensor | None, variant: str, gamma: float, zero_pad_rows: bool) -> Tensor:
    """``l2`` / ``fracdm`` as the official classes write them, per sequence over its real tokens:
    ``cdist`` logits and softmax; or the arccos kernel, the Gaussian-style density with its constant,
    ``D^-1 K D^-1`` and row normalisation (outputs only: acos and cdist have no gradient at u_i = u_j)."""
    b, _, n, d = q.shape
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    keys = real[:, None, None, :]
    unit = q / q.norm(dim=-1, keepdim=True)
    dist = torch.cdist(unit, unit)
    if variant == "l2":
        weights = torch.softmax((-dist.square() * d**-0.5).masked_fill(~keys, float("-inf")), dim=-1)
    else:
        count = real.sum(-1).to(q.dtype)[:, None, None]
        density = (2 * math.pi * math.pi) ** (-d / 2) / count * (dist.exp() * keys).sum(-1)  # (B, H, N)
        kernel = (1 + torch.acos((unit @ unit.transpose(-1, -2)).clamp(-1, 1)) / math.sqrt(math.pi)) ** (-d - gamma)
        kernel = kernel / density[..., :, None] / density[..., None, :] * keys
        weights = kernel / kernel.sum(-1, keepdim=True)
    return weights @ v if not zero_pad_rows else (weights @ v) * real[:, None, :, None].to(v.dtype)
