"""Dense reference of ``performer``: explicit feature matrices and the (N x S) kernel matrix they induce."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.performer.favor import check_performer_args, resolve_projection

__all__ = ["naive_performer_attention"]


def naive_performer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    projection: Tensor | None = None,
    num_features: int = 256,
    kernel: str = "softmax",
    scale: float | None = None,
    feature_eps: float = 0.0,
    compat: str = "none",
    seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """``A v / A 1`` with ``A = phi(Q) phi(K)^T`` masked (pads, and j > i when causal), written out densely.

    Args: as :func:`attnzoo.ops.performer.performer_attention` (``chunk_size`` is accepted and ignored).

    Returns:
        ``(B, H, N, dv)``; rows whose normaliser is 0 give 0.
    """
    check_performer_args(q, k, v, mask, causal, kernel, feature_eps, compat)
    b, h, _, d = q.shape
    w = resolve_projection(projection, h, num_features, d, seed, q, compat).to(q.dtype)
    m = w.shape[-2]
    lra = compat == "nystromformer-lra"
    s = (1.0 / d if lra else d**-0.5) if scale is None else scale
    real = torch.ones(b, k.shape[-2], dtype=torch.bool, device=q.device) if mask is None else mask
    if lra:  # pads become zero keys / values that still count
        k, v, real = k * real[:, None, :, None], v * real[:, None, :, None], torch.ones_like(real)
    wq = torch.einsum("bhnd,hmd->bhnm", q, w) * s**0.5
    wk = torch.einsum("bhnd,hmd->bhnm", k, w) * s**0.5
    if kernel == "relu":
        phi_q, phi_k = wq.clamp_min(0) / m**0.5, wk.clamp_min(0) / m**0.5
    else:
        # stabilisers are constants (detached), as in the official codes, except performer-pytorch 0.15.0's (the
        # LRA code's), through which gradients flow
        graph = wq if lra else wq.detach(), wk if lra else wk.detach()
        c_q = graph[0].amax(-1, keepdim=True)
        pool = graph[1]
        if compat != "efficient-attention":
            pool = pool.masked_fill(~real[:, None, :, None], float("-inf"))
        c_k = pool.amax(dim=(0, 1, 2, 3) if lra else (2, 3), keepdim=True)
        c_k = torch.where(torch.isinf(c_k), torch.zeros_like(c_k), c_k)
        phi_q = torch.exp(wq - s * q.pow(2).sum(-1, keepdim=True) / 2 - c_q) / m**0.5
        phi_k = torch.exp(wk - s * k.pow(2).sum(-1, keepdim=True) / 2 - c_k) / m**0.5
    phi_q, phi_k = phi_q + feature_eps, (phi_k + feature_eps) * real[:, None, :, None]
    kernel_matrix = torch.einsum("bhnm,bhsm->bhns", phi_q, phi_k)
    if causal:
        kernel_matrix = kernel_matrix.tril()
    rows = kernel_matrix.sum(-1, keepdim=True)
    rows = rows.clamp_min(1e-2) if compat == "efficient-attention" else torch.where(rows > 0, rows, 1.0)
    return torch.einsum("bhns,bhsd->bhnd", kernel_matrix, v) / rows
