"""Recurrent decoding state of the feature-map mechanisms (``linear``, ``performer``): running feature sums.

Causal linear attention is an RNN (Katharopoulos et al. 2020): after tokens ``j < t`` the next output
needs only ``S = sum_j phi(k_j) v_j^T`` and ``z = sum_j phi(k_j)``, so the state has a constant size
``(B, H, m, dv + 1)`` (plus a ``(B, H, 1, 1)`` stabiliser frame for exponential features) whatever
the context length, and a step costs O(m dv) per head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.linear.kernel import FeatureFn, causal_feature_step, causal_feature_sums, empty_sums

__all__ = ["FeatureState", "feature_state", "feature_step"]


@dataclass
class FeatureState(DecodeState):
    """Running causal sums, kept in fp32 at least (as the forward accumulates).

    Attributes:
        kv: ``(B, H, m, dv)``, ``sum_j phi(k_j) v_j^T`` over real tokens so far, divided by ``exp(frame)``.
        z: ``(B, H, m)``, ``sum_j phi(k_j)``, divided by ``exp(frame)``.
        frame: ``(B, H, 1, 1)`` log stabiliser of exponential features (``-inf`` before the first real
            key), or None for features without one.
    """

    kv: Tensor
    z: Tensor
    frame: Tensor | None


def feature_state(
    k: Tensor, v: Tensor, mask: Tensor | None, key_features: FeatureFn, width: int, scaled: bool
) -> FeatureState:
    """The state after a prompt: ``k: (B, H, T, d)``, ``v: (B, H, T, dv)``, ``mask: (B, T) | None``.

    Args:
        key_features: the forward's key feature map; width: its m; scaled: it returns a log scale.
    """
    b, h, t, dv = v.shape
    work = torch.promote_types(k.dtype, torch.float32)
    sums = empty_sums(b, h, width, dv, scaled=scaled, dtype=work, device=k.device)
    sums = causal_feature_sums(k, v, key_features=key_features, mask=mask, sums=sums)
    return FeatureState(t, *sums)


def feature_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: DecodeState,
    query_features: Callable[[Tensor], Tensor],
    key_features: FeatureFn,
    normalize: bool = True,
) -> tuple[Tensor, FeatureState]:
    """One token ``q, k, v: (B, H, 1, d)`` after ``state`` -> output ``(B, H, 1, dv)`` and the new state."""
    if not isinstance(state, FeatureState):
        raise TypeError(f"this mechanism decodes from a FeatureState, got {type(state).__name__}")
    out, sums = causal_feature_step(
        q,
        k,
        v,
        query_features=query_features,
        key_features=key_features,
        sums=(state.kv, state.z, state.frame),
        normalize=normalize,
    )
    return out, FeatureState(state.length + 1, *sums)
