"""``scatterbrain``: exact blockwise local attention + Performer features for the rest (efficient-attention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.sampling import EA_COMMON, SampledAttention, check_no_dropout, zero_qkv_bias
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.local import LocalWindow
from attnzoo.ops.performer import draw_projection
from attnzoo.ops.scatterbrain import naive_scatterbrain_attention, scatterbrain_attention
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["ScatterBrainAttention", "ScatterBrainOptions"]


@dataclass(frozen=True)
class ScatterBrainOptions:
    """Options of ``scatterbrain`` (efficient-attention's names; 1D).

    ``window_size`` w blockwise local windows (``overlap_window``: widened by ``max(1, w // 2)``, ``use_rpe``:
    learned local bias); ``approx_attn_dim`` m FAVOR+ features. ``sample_scheme``: ``default`` (official:
    an orthogonal projection buffer in eval, fresh i.i.d. Gaussian rows every training step) or ``fixed``
    (the buffer always). ``compat``: efficient-attention's numerics (see the functional core) and its raw-QR
    buffer draw (:func:`attnzoo.ops.performer.draw_projection`). ``seed``
    seeds the buffer and the training draws.
    """

    window_size: int = 4
    overlap_window: bool = False
    use_rpe: bool = False
    approx_attn_dim: int = 64
    sample_scheme: str = "default"
    compat: bool = False
    seed: int | None = None
    executor: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("window_size", self.window_size, minimum=1)
        check_int("approx_attn_dim", self.approx_attn_dim, minimum=1)
        check_choice("sample_scheme", self.sample_scheme, ("default", "fixed"))
        check_choice("executor", self.executor, EXECUTOR_NAMES)


def scatterbrain_flops(n: int, d: int, options: ScatterBrainOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``4 N d (w + 2e) + 2 N m d (2 + 3)``.

    Local scores and values over ``w + 2e`` keys; features of q and k (``2 N m d`` each); the key sums
    ``sum phi(k) v^T`` and their window parts (``2 N m d`` each); the low-rank output (``2 N m d``).
    """
    e = LocalWindow.resolve(
        mode="blockwise", window_size=options.window_size, overlap_window=options.overlap_window
    ).extension
    return 4.0 * n * d * (options.window_size + 2 * e) + 10.0 * n * options.approx_attn_dim * d


@register(
    "scatterbrain",
    options=ScatterBrainOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(N*(w+m)*d)",
        memory="O(N*m+N*d)",
        pattern="blockwise_window",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        # (only where the window divides N, no dropout or RPE, does the grouped path alone take the call)
        compile_fullgraph=False,
    ),
    functional=scatterbrain_attention,
    reference=naive_scatterbrain_attention,
    flops=scatterbrain_flops,
    option_renames={"num_features": "approx_attn_dim"},
)
class ScatterBrainAttention(SampledAttention):
    """ScatterBrain: exact local blocks plus FAVOR+ estimates of every other key, in one softmax.

    Deterministic in eval (the ``projection`` buffer); with ``sample_scheme='default'`` training draws one
    ``(H, m, d)`` i.i.d. Gaussian projection per step (``draws=[W]``). Attention dropout does not apply.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: ScatterBrainOptions = options
        proj = draw_projection(num_heads, o.approx_attn_dim, self.head_dim, raw_qr=o.compat, generator=self.generator)
        self.register_buffer("projection", proj)
        window = LocalWindow.resolve(mode="blockwise", window_size=o.window_size, overlap_window=o.overlap_window)
        self.rpe_table = nn.Parameter(torch.zeros(window.rpe_shape(num_heads))) if o.use_rpe else None
        if self.rpe_table is not None:
            nn.init.trunc_normal_(self.rpe_table, std=0.02)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: ScatterBrainOptions = self.options
        proj = self.projection
        if self.training and o.sample_scheme == "default":
            proj = self.gaussian(tuple(proj.shape), proj)
        return scatterbrain_attention(
            q,
            k,
            v,
            mask=mask,
            window_size=o.window_size,
            overlap_window=o.overlap_window,
            projection=proj,
            rpe_table=self.rpe_table,
            compat=o.compat,
            executor=o.executor,
        )


def _official_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    check_no_dropout(args, "proj_drop")
    if args["proj_method"] != "favorp" or args["cos_weighting"] or args["attn_2d"]:
        raise ValueError(
            "only proj_method='favorp', cos_weighting=False, attn_2d=False are supported "
            "(other feature maps crash the official ScatterBrain)"
        )
    keys = ("window_size", "overlap_window", "use_rpe", "approx_attn_dim", "sample_scheme")
    return {**{key: args[key] for key in keys}, "compat": True}


def _official_convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``eval_proj`` / ``random_proj`` -> ``projection``; ``local_relative_position_bias_table`` -> ``rpe_table``."""
    renamed = {
        "eval_proj": "projection",
        "random_proj": "projection",
        "local_relative_position_bias_table": "rpe_table",
    }
    return {renamed.get(k, k): v for k, v in zero_qkv_bias(state_dict).items()}


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="scatterbrain",
        mechanism="scatterbrain",
        defaults={
            "window_size": 4,
            "overlap_window": False,
            "use_rpe": False,
            "attn_2d": False,
            "approx_attn_dim": 64,
            "proj_method": "favorp",
            "cos_weighting": False,
            "sample_scheme": "default",
            **EA_COMMON,
        },
        options=_official_options,
        convert=_official_convert,
        notes="ScatterBrain (favorp only, 1D); eval_proj -> projection; compat=True (clamp 1e-3, +1e-5, "
        "buffer drawn with the raw QR, no sign(diag R) correction, as the official code); "
        "E10 NaN rows not reproduced (out-of-range keys have feature 0)",
    )
)
