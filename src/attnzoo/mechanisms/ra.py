"""``ra``: randomized attention (efficient-attention ``RandomizedAttention``), dense, one sample per query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from attnzoo.mechanisms.sampling import EA_COMMON, SampledAttention, check_no_dropout, zero_qkv_bias
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.ra import naive_ra_attention, ra_attention, sample_key_index
from attnzoo.options import check_field_types, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["RaAttention", "RaOptions"]


@dataclass(frozen=True)
class RaOptions:
    """Options of ``ra``: ``num_samples`` (0: mean key, -1: softmax-weighted key, >= 1: one sampled key,
    official default 1), ``compat`` (quirk E9: ignore the padding mask), ``seed`` (the module's draws)."""

    num_samples: int = 1
    compat: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("num_samples", self.num_samples, minimum=-1)


def ra_flops(n: int, d: int, options: RaOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``4 N^2 d`` for the random-feature softmax, plus ``2 N^2 d``
    for the key distribution pi (``num_samples >= 1``) or ``4 N^2 d`` for the pi-weighted key (``-1``)."""
    extra = {0: 0.0, -1: 4.0}.get(options.num_samples, 2.0)
    return (4.0 + extra) * n * n * d


@register(
    "ra",
    options=RaOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=False,
        time="O(N^2*d)",
        memory="O(N^2)",
    ),
    functional=ra_attention,
    reference=naive_ra_attention,
    flops=ra_flops,
)
class RaAttention(SampledAttention):
    """RA: attention estimated with one adaptive Gaussian sample per query (stochastic in eval, as official).

    Draws, in the official order: the key index per query (``num_samples >= 1``, train and eval,
    ``(B, H, N)`` long), then in training one ``(B, H, N, d)`` Gaussian; ``forward(x, mask, draws=[...])``.
    """

    def padding_takes_part(self) -> bool:
        """Under ``compat`` (E9) padded tokens are keys, their content included, as officially."""
        return self.options.compat

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: RaOptions = self.options
        b, h, n, d = q.shape
        key_index = None
        if o.num_samples >= 1:
            keys = None if o.compat else mask
            key_index = self.take_draw((b, h, n), lambda gen: sample_key_index(q, k, keys, d**-0.5, gen))
        noise = self.gaussian((b, h, n, d), q) if self.training else None
        return ra_attention(
            q, k, v, mask=mask, num_samples=o.num_samples, key_index=key_index, noise=noise, compat=o.compat
        )


def _official_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    check_no_dropout(args, "proj_drop")
    return {"num_samples": args["num_samples"], "compat": True}


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="ra",
        mechanism="ra",
        defaults={"num_samples": 1, **EA_COMMON},
        options=_official_options,
        convert=lambda state_dict, args: zero_qkv_bias(state_dict),
        notes="RandomizedAttention; stochastic in eval (inject draws=[key_index] to compare); compat=True (E9)",
    )
)
