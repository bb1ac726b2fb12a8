"""``dilated``: LongNet dilated attention, a softmax-denominator mixture of (segment, dilation) branches."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.dilated import dilated_attention, dilated_flops, naive_dilated_attention
from attnzoo.ops.dilated.decode import SegmentCache, segment_cache, segment_step
from attnzoo.ops.dilated.offsets import OFFSET_RULES, check_branches
from attnzoo.ops.dilated.parallel import current_group, dilated_attention_parallel
from attnzoo.options import check_choice, check_field_types
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["DilatedAttention", "DilatedOptions"]


@dataclass(frozen=True)
class DilatedOptions:
    """Options of ``dilated`` (LongNet; torchscale's ``DilatedAttention`` semantics by default).

    ``segment_lengths`` w_i and ``dilation_rates`` r_i pair up (w clipped to N). ``offset_rule``:
    per-head offsets as torchscale (contiguous head blocks) or the paper (j mod r).
    ``detach_mixing``: stop gradients through the mixing weights, as torchscale does (off by
    default: exact gradients). ``subln``: torchscale's sub-LayerNorm before the output projection.
    ``sequence_parallel``: the module sees this rank's chunk of each sequence and runs
    :func:`attnzoo.ops.dilated.parallel.dilated_attention_parallel` over the process group set by
    :func:`~attnzoo.ops.dilated.parallel.sequence_parallel_group` (default: the whole world).
    """

    segment_lengths: tuple[int, ...] = (2048, 4096, 8192)
    dilation_rates: tuple[int, ...] = (1, 2, 4)
    offset_rule: str = "torchscale"
    detach_mixing: bool = False
    subln: bool = False
    executor: str = "auto"
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "segment_lengths", tuple(self.segment_lengths))
        object.__setattr__(self, "dilation_rates", tuple(self.dilation_rates))
        check_field_types(self)
        check_branches(self.segment_lengths, self.dilation_rates)
        check_choice("offset_rule", self.offset_rule, OFFSET_RULES)
        check_choice("executor", self.executor, EXECUTOR_NAMES)


@register(
    "dilated",
    options=DilatedOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=False,
        exact=True,
        deterministic=True,
        time="O(N*d*sum(w_i/r_i^2))",
        memory="O(N*d)",
        pattern="dilated_segments",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        compile_fullgraph=False,
    ),
    functional=dilated_attention,
    reference=naive_dilated_attention,
    flops=dilated_flops,
)
class DilatedAttention(AttentionBase):
    """LongNet dilated attention: segments, dilation, per-head offsets, log-sum-exp mixture."""

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        self.inner_attn_ln = nn.LayerNorm(dim) if options.subln else None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: DilatedOptions = self.options
        kwargs: dict[str, Any] = dict(
            mask=mask,
            causal=self.causal,
            segment_lengths=o.segment_lengths,
            dilation_rates=o.dilation_rates,
            offset_rule=o.offset_rule,
            detach_mixing=o.detach_mixing,
            dropout_p=self.attention_dropout(),
            executor=o.executor,
        )
        if o.sequence_parallel:
            return dilated_attention_parallel(q, k, v, group=current_group(), **kwargs)
        return dilated_attention(q, k, v, **kwargs)

    def check_decoding(self) -> None:
        """Causal modules decode with per-branch segment caches; sequence-parallel ones refuse."""
        super().check_decoding()
        if self.options.sequence_parallel:
            raise ValueError("dilated with sequence_parallel=True has no token-by-token decoding; build it without")

    def branches(self) -> dict[str, Any]:
        """The branch geometry the decoding helpers take."""
        o: DilatedOptions = self.options
        return dict(segment_lengths=o.segment_lengths, dilation_rates=o.dilation_rates, offset_rule=o.offset_rule)

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> SegmentCache:
        return segment_cache(k, v, mask, **self.branches())

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, SegmentCache]:
        if not isinstance(state, SegmentCache):
            raise TypeError(f"dilated decodes from a SegmentCache, got {type(state).__name__}")
        return segment_step(q, k, v, state, dropout_p=self.attention_dropout(), **self.branches())

    def merge(self, out: Tensor) -> Tensor:
        """Merge heads, apply the optional sub-LayerNorm, then the output projection."""
        b, _, n, _ = out.shape
        merged = out.transpose(1, 2).reshape(b, n, self.dim)
        if self.inner_attn_ln is not None:
            merged = self.inner_attn_ln(merged)
        return self.proj(merged)

    @staticmethod
    def convert_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map torchscale ``DilatedAttention`` weights to this module.

        ``q_proj``, ``k_proj``, ``v_proj`` are stacked into ``qkv`` (q first; heads are contiguous
        slices in both), ``out_proj`` becomes ``proj``, ``inner_attn_ln`` keeps its name (a
        ``MultiwayWrapper``'s ``.A`` branch is used when present).
        """
        # A MultiwayWrapper holds two copies (.A for the first modality, .B for the second): keep .A.
        sd = {k.replace(".A.", "."): v for k, v in state_dict.items() if ".B." not in k}
        missing = [f"{p}_proj.{t}" for p in "qkv" for t in ("weight", "bias") if f"{p}_proj.{t}" not in sd]
        if missing:
            raise ValueError(f"not a torchscale DilatedAttention state dict: missing {', '.join(missing)}")
        out = {
            "qkv.weight": torch.cat([sd["q_proj.weight"], sd["k_proj.weight"], sd["v_proj.weight"]]),
            "qkv.bias": torch.cat([sd["q_proj.bias"], sd["k_proj.bias"], sd["v_proj.bias"]]),
            "proj.weight": sd["out_proj.weight"],
            "proj.bias": sd["out_proj.bias"],
        }
        out.update({k: v for k, v in sd.items() if k.startswith("inner_attn_ln.")})
        return out


def _int_list(name: str, value: Any) -> tuple[int, ...]:
    """torchscale keeps ``segment_length`` / ``dilated_ratio`` as strings it ``eval``s (``"[2048,4096]"``)."""
    parsed = ast.literal_eval(value) if isinstance(value, str) else value
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(v, int) for v in parsed):
        raise ValueError(f"torchscale argument {name} must be a list of ints (or its string), got {value!r}")
    return tuple(parsed)


def _torchscale_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    fixed = {"flash_attention": True, "xpos_rel_pos": False, "layernorm_eps": 1e-5, "attention_dropout": 0.0}
    wrong = {k: args[k] for k, v in fixed.items() if args[k] != v}
    if wrong:
        raise ValueError(f"torchscale arguments {wrong} are not supported here; supported: {fixed}")
    return {
        "segment_lengths": _int_list("segment_length", args["segment_length"]),
        "dilation_rates": _int_list("dilated_ratio", args["dilated_ratio"]),
        "offset_rule": "torchscale",
        "detach_mixing": True,
        "subln": bool(args["subln"]),
        "sequence_parallel": bool(args["seq_parallel"]),
    }


register_official(
    OfficialEntry(
        source="torchscale",
        name="dilated_attention",
        mechanism="dilated",
        defaults={
            "segment_length": "[2048,4096,8192]",
            "dilated_ratio": "[1,2,4]",
            "subln": True,
            "flash_attention": True,
            "xpos_rel_pos": False,
            "multiway": False,
            "seq_parallel": False,
            "layernorm_eps": 1e-5,
            "attention_dropout": 0.0,
        },
        options=_torchscale_options,
        convert=lambda state_dict, args: DilatedAttention.convert_official(state_dict),
        notes="DilatedAttention: q/k/v_proj -> qkv, out_proj -> proj, inner_attn_ln kept (subln); offset_rule "
        "torchscale (T1), detach_mixing (T2); multiway -> branch A; seq_parallel -> sequence_parallel. Not "
        "reproduced: T3/T4 (unmasked internal zero padding when w does not divide N or r does not divide w: "
        "attnzoo masks it, so only those lengths differ), T7 (dropout in eval)",
    )
)
