"""``linear``: elu+1 kernelized linear attention (Katharopoulos et al.), causal by chunked prefix sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.mechanisms.lra_official import lra_entry
from attnzoo.mechanisms.recurrent import FeatureState, feature_state, feature_step
from attnzoo.ops.linear import linear_attention, naive_linear_attention
from attnzoo.ops.linear.kernel import CAUSAL_CHUNK
from attnzoo.ops.linear.linear import COMPAT, elu_feature_maps
from attnzoo.options import check_choice, check_field_types
from attnzoo.registry import Capabilities, register

__all__ = ["LinearAttention", "LinearOptions"]


@dataclass(frozen=True)
class LinearOptions:
    """Options of ``linear``.

    ``compat="nystromformer-lra"``: the LRA code's ``linear`` kernel exactly (quirk N5: q and k divided by
    the fourth root of the padded length, no normaliser, so outputs grow with N and depend on the pad
    amount); default ``"none"``: the normalised elu+1 attention of the paper.
    """

    compat: str = "none"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choice("compat", self.compat, COMPAT)


def linear_flops(n: int, d: int, options: LinearOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``4 N d^2`` (``sum phi(k) v^T`` and ``phi(q)`` times it),
    plus ``4 N C d`` causal (the exact (C x C) term inside each chunk of C tokens)."""
    return 4.0 * n * d * d + (4.0 * n * min(CAUSAL_CHUNK, n) * d if causal else 0.0)


@register(
    "linear",
    options=LinearOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=True,
        exact=False,
        deterministic=True,
        time="O(N*d^2)",
        memory="O(N*d)",
    ),
    functional=linear_attention,
    reference=naive_linear_attention,
    flops=linear_flops,
)
class LinearAttention(AttentionBase):
    """Linear attention with the elu+1 feature map: O(N d^2), normalised (or the LRA code's form).

    No attention probabilities exist, so ``dropout`` is not applied. Causal: decodes token by token
    from running sums (:class:`~attnzoo.mechanisms.recurrent.FeatureState`, constant size); the LRA form
    cannot be causal (its scale depends on the total length).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        if causal and options.compat != "none":
            raise ValueError(
                f"causal linear needs compat='none': compat={options.compat!r} divides every row by the padded "
                "length N^(1/2), so row i would depend on how many tokens follow it"
            )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        return linear_attention(q, k, v, mask=mask, causal=self.causal, compat=self.options.compat)

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> FeatureState:
        """Running sums of ``elu(k) + 1`` (``m = d``) over the prompt."""
        return feature_state(k, v, mask, elu_feature_maps()[1], k.shape[-1], scaled=False)

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, FeatureState]:
        return feature_step(q, k, v, state, *elu_feature_maps())


lra_entry(
    "linear",
    "linear",
    {},
    lambda args, causal: {"compat": "nystromformer-lra"},
    notes="LinearAttention: elu+1, divided by N^(1/4), no normaliser (compat nystromformer-lra, N5)",
)
