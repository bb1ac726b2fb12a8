"""``butterfly``: Dimension Mixer's butterfly attention (softmax inside strided groups of b tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.official.registry import OfficialEntry, register_official
from attnzoo.ops.butterfly import butterfly_attention, naive_butterfly_attention
from attnzoo.ops.butterfly.decode import GroupCache, group_cache, group_step
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES
from attnzoo.sparse.structured import butterfly_geometry

__all__ = ["ButterflyAttention", "ButterflyOptions", "butterfly_flops"]


@dataclass(frozen=True)
class ButterflyOptions:
    """Options of ``butterfly`` (Solving-LRA-PathX names in brackets).

    ``block_size`` b [``butterfly_radix``]: tokens per group. ``stage`` [``layer_index``]: selects
    the stride ``b ** (stage mod n_stage)``; ``attnzoo.models`` gives layer l ``stage=l`` so strides
    cycle with depth as in the official model. ``float_stage_count``: the official float
    ``n_stage`` (quirk B1; off by default). ``max_seq_len``: the official fixed input length: strides
    are those of ``max_seq_len`` tokens for every input (N <= max_seq_len, as if right-padded to it);
    None (default) takes them from each input's own N. Causal decoding with ``stage > 0`` needs it:
    otherwise a prompt's groups would differ from the whole sequence's.
    """

    block_size: int = 64
    stage: int = 0
    float_stage_count: bool = False
    max_seq_len: int | None = None
    executor: str = "auto"

    layer_index_option = "stage"  # attnzoo.models sets this field to the layer index
    max_length_option = "max_seq_len"  # ... and this one to the model's length when it is causal

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("block_size", self.block_size, minimum=2)
        check_int("stage", self.stage, minimum=0)
        if self.max_seq_len is not None:
            check_int("max_seq_len", self.max_seq_len, minimum=1)
        check_choice("executor", self.executor, EXECUTOR_NAMES)


def butterfly_flops(n: int, d: int, options: ButterflyOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``QK^T`` and ``PV`` over the padded groups,
    ``4 * L * b * d`` (L = padded length of ``max_seq_len`` if set, else of N), halved (plus the
    diagonal) when causal."""
    b = options.block_size
    geometry = n if options.max_seq_len is None else options.max_seq_len
    _, length = butterfly_geometry(geometry, b, options.stage, float_stage_count=options.float_stage_count)
    pairs = length * b * ((b + 1) / (2 * b) if causal else 1.0)
    return 4.0 * pairs * d


@register(
    "butterfly",
    options=ButterflyOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=False,
        exact=True,
        deterministic=True,
        time="O(N*b*d)",
        memory="O(N*d)",
        pattern="butterfly_groups",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        compile_fullgraph=False,
    ),
    functional=butterfly_attention,
    reference=naive_butterfly_attention,
    flops=butterfly_flops,
)
class ButterflyAttention(AttentionBase):
    """Butterfly attention: exact softmax inside groups of b tokens at stride b^stage (Dimension Mixer)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: ButterflyOptions = self.options
        return butterfly_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            block_size=o.block_size,
            stage=o.stage,
            float_stage_count=o.float_stage_count,
            max_seq_len=o.max_seq_len,
            dropout_p=self.attention_dropout(),
            executor=o.executor,
        )

    def geometry(self) -> tuple[int, int]:
        """``(stride s, span b s)`` of a decoded sequence (s = 1 at stage 0, else that of ``max_seq_len``)."""
        o: ButterflyOptions = self.options
        if o.max_seq_len is None:
            return 1, o.block_size
        stride, _ = butterfly_geometry(o.max_seq_len, o.block_size, o.stage, float_stage_count=o.float_stage_count)
        return stride, o.block_size * stride

    def check_decoding(self) -> None:
        """Decoding needs groups that do not depend on the final length: stage 0, or ``max_seq_len`` set."""
        super().check_decoding()
        o: ButterflyOptions = self.options
        if o.stage > 0 and o.max_seq_len is None:
            raise ValueError(
                f"butterfly stage={o.stage} takes its stride from the sequence length (b ** (stage mod "
                "ceil(log_b N)), capped), so a prompt's groups differ from the whole sequence's; set "
                "max_seq_len (the longest sequence to decode) to fix the stride and decode"
            )

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> GroupCache:
        return group_cache(k, v, mask, self.geometry()[1])

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, GroupCache]:
        if not isinstance(state, GroupCache):
            raise TypeError(f"butterfly decodes from a GroupCache, got {type(state).__name__}")
        limit = self.options.max_seq_len
        if limit is not None and state.length >= limit:
            raise ValueError(f"butterfly with max_seq_len={limit} decodes at most {limit} tokens")
        stride, span = self.geometry()
        return group_step(q, k, v, state, stride=stride, span=span, dropout_p=self.attention_dropout())


def convert_lra_attention(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """Nystromformer-LRA ``Attention`` weights (``W_q W_k W_v ff``, optional ``mha.`` prefix) to
    ``qkv`` (q, k, v stacked; heads are contiguous slices in both) and ``proj``.

    Raises:
        ValueError: a missing tensor (named).
    """
    sd = {k.removeprefix("mha."): v for k, v in state_dict.items()}
    names = [f"{p}.{t}" for p in ("W_q", "W_k", "W_v", "ff") for t in ("weight", "bias")]
    missing = [name for name in names if name not in sd]
    if missing:
        raise ValueError(f"not an LRA Attention state dict: missing {', '.join(missing)}")
    extra = sorted(set(sd) - set(names))
    if extra:
        raise ValueError(f"unexpected official tensors {extra}")
    return {
        "qkv.weight": torch.cat([sd["W_q.weight"], sd["W_k.weight"], sd["W_v.weight"]]),
        "qkv.bias": torch.cat([sd["W_q.bias"], sd["W_k.bias"], sd["W_v.bias"]]),
        "proj.weight": sd["ff.weight"],
        "proj.bias": sd["ff.bias"],
    }


def _butterfly_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if args["sub_attn_type"] != "softmax":
        raise ValueError(f"sub_attn_type {args['sub_attn_type']!r}: only 'softmax' is used by the official runs")
    return {"block_size": args["butterfly_radix"], "stage": args["layer_index"], "float_stage_count": True}


register_official(
    OfficialEntry(
        source="solving-lra-pathx",
        name="butterfly",
        mechanism="butterfly",
        defaults={"butterfly_radix": 64, "layer_index": 0, "sub_attn_type": "softmax", "attention_dropout": 0.1},
        options=_butterfly_options,
        convert=convert_lra_attention,
        notes="attention of ButterflyTransformer layer `layer_index` (W_q/W_k/W_v -> qkv, ff -> proj); "
        "float_stage_count on (B1)",
    )
)
