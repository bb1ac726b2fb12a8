"""``linear``: kernelized attention with the elu+1 feature map (Katharopoulos et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.common.precision import fp32_core
from attnzoo.ops.linear.kernel import FeatureFn, feature_attention

__all__ = ["COMPAT", "check_linear_args", "elu_feature_maps", "linear_attention"]

COMPAT = ("none", "nystromformer-lra")


def check_linear_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, compat: str) -> None:
    """Shape, mask and flag checks shared by the fast path and the reference."""
    check_qkv(q, k, v)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs N == S, got N={q.shape[-2]}, S={k.shape[-2]}")
    check_padding_mask(mask, q.shape[0], k.shape[-2], q.device)
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPAT))}; got {compat!r}")


def elu_feature_maps(q_div: float = 1.0, k_div: float = 1.0) -> tuple[Callable[[Tensor], Tensor], FeatureFn]:
    """``phi = elu + 1`` for queries ``(B, H, C, d) -> (B, H, C, d)`` and keys ``(chunk, real) -> (features, None)``
    (0 at masked keys), divided by ``q_div`` / ``k_div`` (the LRA form's fourth roots of the lengths)."""

    def query_features(x: Tensor) -> Tensor:
        return F.elu(x) + 1.0 if q_div == 1.0 else (F.elu(x) + 1.0) / q_div

    def key_features(x: Tensor, real: Tensor | None) -> tuple[Tensor, None]:
        feats = F.elu(x) + 1.0 if k_div == 1.0 else (F.elu(x) + 1.0) / k_div
        return (feats if real is None else feats * real[:, None, :, None].to(feats.dtype)), None

    return query_features, key_features


@fp32_core
def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    compat: str = "none",
    chunk_size: int | None = None,
) -> Tensor:
    """Linear attention ``y_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)``, ``phi = elu + 1``.

    O(N*d*dv) time and memory, never an N x S matrix; causal by chunked prefix sums. Computed in fp32
    (at least) with autocast off, returned in q's dtype or autocast's (``ops.common.precision.fp32_core``).
    Paper: Katharopoulos et al., "Transformers are RNNs" (2020).

    Args:
        q: queries ``(B, H, N, d)``; k: keys ``(B, H, S, d)``; v: values ``(B, H, S, dv)``.
        mask: ``(B, S)`` bool padding mask, True = real key. Default: None.
        causal: row i uses keys j <= i (needs N == S). Default: False.
        compat: ``"nystromformer-lra"`` reproduces mlpen/Nystromformer's ``LinearAttention`` (quirk N5 of
            ``shared/specs/official-code-behaviour.md``): ``phi(q) / N^(1/4)``, ``phi(k) / S^(1/4)`` with
            the *padded* lengths, pads zeroed in k and v, and **no normaliser**. Default ``"none"``.
        chunk_size: tokens per chunk of the engine (default: automatic).

    Returns:
        ``(B, H, N, dv)``; rows without a visible real key are 0.

    Raises:
        ValueError / TypeError: bad shapes, dtypes, mask or ``compat``.

    Reference: :func:`attnzoo.ops.linear.naive_linear_attention`.
    """
    check_linear_args(q, k, v, mask, causal, compat)
    lra = compat == "nystromformer-lra"
    q_div = q.shape[-2] ** 0.25 if lra else 1.0
    k_div = k.shape[-2] ** 0.25 if lra else 1.0

    query_features, key_features = elu_feature_maps(q_div, k_div)
    return feature_attention(
        q,
        k,
        v,
        query_features=query_features,
        key_features=key_features,
        mask=mask,
        causal=causal,
        normalize=not lra,
        chunk_size=chunk_size,
    )
