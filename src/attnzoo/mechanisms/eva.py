"""``eva``: efficient attention via control variates (efficient-attention ``EVA``): local window + chunk summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.sampling import (
    EA_COMMON,
    SampledAttention,
    check_grid_options,
    check_no_dropout,
    grid_options,
    grid_shape,
    proposal_net,
    zero_qkv_bias,
)
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.eva import eva_attention, naive_eva_attention
from attnzoo.ops.eva.chunks import eva_segments, t5_num_buckets
from attnzoo.ops.local import LocalWindow
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["T5_KEY", "EvaAttention", "EvaOptions"]

T5_KEY = "rel_pos_bias.relative_attention_bias.weight"  # the official T5 module's embedding


@dataclass(frozen=True)
class EvaOptions:
    """Options of ``eva`` (efficient-attention's names; defaults of its command line).

    ``window_size`` w: blockwise local windows (``overlap_window``: widened by ``max(1, w // 2)``),
    ``w x w`` tiles with ``attn_2d`` on an ``image_height x image_width`` grid (square if not given).
    ``num_landmarks`` L chunks. ``adaptive_proj``: ``default`` (Linear + LayerNorm maps of the chunk
    means), ``no-ln`` (Linear only), ``none`` (mu = 0, only the key map). ``use_rpe``: the local
    relative-position table; ``use_t5_rpe``: T5 buckets (1D). ``compat``: efficient-attention's quirks
    E6/E7 (see :func:`attnzoo.ops.eva.eva_attention`). ``seed`` seeds the training draws.
    """

    window_size: int = 4
    num_landmarks: int = 49
    adaptive_proj: str = "default"
    overlap_window: bool = False
    attn_2d: bool = False
    image_height: int | None = None
    image_width: int | None = None
    use_rpe: bool = False
    use_t5_rpe: bool = False
    compat: bool = False
    seed: int | None = None
    executor: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("window_size", self.window_size, minimum=1)
        check_int("num_landmarks", self.num_landmarks, minimum=1)
        check_choice("adaptive_proj", self.adaptive_proj, ("default", "no-ln", "none"))
        check_choice("executor", self.executor, EXECUTOR_NAMES)
        if self.use_rpe and self.use_t5_rpe:
            raise ValueError("options use_rpe and use_t5_rpe exclude each other")
        if self.use_t5_rpe and self.attn_2d:
            raise ValueError("option use_t5_rpe is 1D only; use use_rpe with attn_2d")
        check_grid_options(self)

    def window(self) -> LocalWindow:
        """The local block geometry (2D grids get their size per input; ``(1, 1)`` stands in)."""
        grid = (1, 1) if self.attn_2d else None
        return LocalWindow.resolve(
            mode="blockwise", window_size=self.window_size, overlap_window=self.overlap_window, grid=grid
        )


def eva_flops(n: int, d: int, options: EvaOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``4 N d (|E| + C + 1)``.

    Local: ``|E| = (w + 2e)`` keys per query (``(w + 2e)^2`` in 2D) for scores and values; chunk
    summaries: one score and one weighted value per token (``4 N d``); global: C chunk logits and
    values per query, C = min(L, N).
    """
    e = options.window().extension
    span = options.window_size + 2 * e
    keys = span * span if options.attn_2d else span
    return 4.0 * n * d * (keys + min(options.num_landmarks, n) + 1)


@register(
    "eva",
    options=EvaOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(N*(w+C)*d)",
        memory="O(N*(C+d))",
        pattern="blockwise_window | window_2d",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        # (only where the window divides N, no dropout or RPE, does the grouped path alone take the call)
        compile_fullgraph=False,
    ),
    functional=eva_attention,
    reference=naive_eva_attention,
    flops=eva_flops,
)
class EvaAttention(SampledAttention):
    """EVA: exact local attention plus one randomized control-variate summary per chunk, one softmax.

    Deterministic in eval; training draws one ``(B, H, C, d)`` Gaussian (the official ``randn_like(mu)``;
    inject with ``forward(x, mask, draws=[noise])``). Attention dropout does not apply.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: EvaOptions = options
        window = o.window()
        layer_norm = o.adaptive_proj != "no-ln"
        self.adaptive_mu_q = None if o.adaptive_proj == "none" else proposal_net(self.head_dim, layer_norm)
        self.adaptive_mu_k = proposal_net(self.head_dim, layer_norm)
        self.rpe_table = nn.Parameter(torch.zeros(window.rpe_shape(num_heads))) if o.use_rpe else None
        if self.rpe_table is not None:
            nn.init.trunc_normal_(self.rpe_table, std=0.02)
        buckets = t5_num_buckets(o.window_size, window.extension)
        self.rel_pos_bias = nn.Embedding(buckets, num_heads) if o.use_t5_rpe else None

    def chunk_keys(self, q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
        """``k_hat = f_k(k_bar)``, ``mu = (f_q(q_bar) + k_hat) / 2`` (``none``: mu = 0)."""
        k_hat = self.adaptive_mu_k(k_bar)
        if self.adaptive_mu_q is None:
            return k_hat, torch.zeros_like(k_hat)
        return k_hat, 0.5 * (self.adaptive_mu_q(q_bar) + k_hat)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: EvaOptions = self.options
        b, h, n, d = q.shape
        grid = grid_shape(n, o.image_height, o.image_width) if o.attn_2d else None
        noise = None
        if self.training:
            seg = eva_segments(
                mask,
                b,
                n,
                window_size=o.window_size,
                num_landmarks=o.num_landmarks,
                extension=o.window().extension,
                grid=grid,
                compat=o.compat,
                device=q.device,
            )
            noise = self.gaussian((b, h, seg.count, d), q)
        return eva_attention(
            q,
            k,
            v,
            mask=mask,
            window_size=o.window_size,
            num_landmarks=o.num_landmarks,
            overlap_window=o.overlap_window,
            grid=grid,
            rpe_table=self.rpe_table,
            t5_table=None if self.rel_pos_bias is None else self.rel_pos_bias.weight,
            chunk_keys=self.chunk_keys,
            noise=noise,
            compat=o.compat,
            executor=o.executor,
        )


def _official_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    check_no_dropout(args, "proj_drop")
    shape = args["seq_shape"]
    if args["attn_2d"] != (shape is not None):
        raise ValueError("attn_2d=True needs seq_shape=(H, W) (the official [B,H,W,C] input), and only then")
    grid = grid_options(shape)
    keys = ("window_size", "num_landmarks", "adaptive_proj", "overlap_window", "use_rpe", "use_t5_rpe")
    return {**{key: args[key] for key in keys}, **grid, "compat": True}


def _official_convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``local_relative_position_bias_table`` -> ``rpe_table``, the T5 embedding's weight -> ``rel_pos_bias.weight``;
    the 2D index buffer is recomputed here."""
    renamed = {"local_relative_position_bias_table": "rpe_table", T5_KEY: "rel_pos_bias.weight"}
    return {renamed.get(k, k): v for k, v in zero_qkv_bias(state_dict).items() if k != "relative_position_index"}


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="eva",
        mechanism="eva",
        defaults={
            "window_size": 4,
            "num_landmarks": 49,
            "adaptive_proj": "default",
            "overlap_window": False,
            "attn_2d": False,
            "use_rpe": False,
            "use_t5_rpe": False,
            "seq_shape": None,
            **EA_COMMON,
        },
        options=_official_options,
        convert=_official_convert,
        notes="EVA; seq_shape=(H, W) with attn_2d; compat=True (E6, E7); fp32, attn_drop unused (dead)",
    )
)
