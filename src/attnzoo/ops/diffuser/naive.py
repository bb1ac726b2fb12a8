"""Dense reference for Diffuser: the N x N edge-softmax matrix A and the closed form sum_k c_k A^k V."""

from __future__ import annotations

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
