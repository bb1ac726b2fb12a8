"""Dense reference of ``linear``: the explicit (N x S) kernel matrix, masked and row-normalised."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.common import check_qkv

__all__ = ["naive_linear_attention"]


def naive_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    compat: str = "none",
    chunk_size: int | None = None,
) -> Tensor:
    """``A v`` with ``A_ij = (elu(q_i)+1).(elu(k_j)+1)`` over allowed keys, divided by the row sum.

    Args: as :func:`attnzoo.ops.linear.linear_attention` (``chunk_size`` is accepted and ignored).
        ``compat="nystromformer-lra"``: ``A`` scaled by ``(N S)^(-1/4)``, pads zeroed in k and v, no row division.

    Returns:
        ``(B, H, N, dv)``; rows with no allowed key are 0.
    """
    check_qkv(q, k, v)
    phi_q = torch.where(q > 0, q + 1.0, torch.exp(q))
    phi_k = torch.where(k > 0, k + 1.0, torch.exp(k))
    kernel = torch.einsum("bhnd,bhsd->bhns", phi_q, phi_k)
    n, s = q.shape[-2], k.shape[-2]
    allowed = torch.ones(n, s, dtype=torch.bool, device=q.device)[None, None]
    if causal:
        allowed = allowed & torch.ones(n, s, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    kernel = kernel * allowed.to(kernel.dtype)
    if compat == "nystromformer-lra":
        return torch.einsum("bhns,bhsd->bhnd", kernel / (n * s) ** 0.25, v)
    rows = kernel.sum(-1, keepdim=True)
    return torch.einsum("bhns,bhsd->bhnd", kernel / torch.where(rows > 0, rows, 1.0), v)
