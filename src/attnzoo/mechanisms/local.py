"""``local``: sliding or blockwise window attention, 1D or over a 2D grid, optional learned RPE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.mechanisms.sampling import EA_COMMON, check_no_dropout, grid_shape, zero_qkv_bias
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.local import LocalWindow, local_attention, local_flops, naive_local_attention
from attnzoo.ops.local.decode import WindowCache, window_cache, window_step
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["LocalAttention", "LocalOptions"]


@dataclass(frozen=True)
class LocalOptions:
    """Options of ``local`` (efficient-attention's names where they exist).

    ``mode="sliding"``: query i sees keys within ``window_size`` tokens (``look_back`` /
    ``look_ahead`` override each side). ``mode="blockwise"``: efficient-attention's non-sliding
    blocks of ``window_size`` (widened by ``max(1, w // 2)`` with ``overlap_window``).
    ``attn_2d``: windows over a row-major ``image_height x image_width`` grid (a square
    ``sqrt(N) x sqrt(N)`` grid when the sizes are not given); tiles of ``window_size x window_size``
    for blockwise, a ``(2w+1) x (2w+1)`` neighbourhood for sliding. ``use_rpe``: a learned relative
    position bias per head (efficient-attention's table for blockwise windows).
    """

    window_size: int = 64
    mode: str = "sliding"
    look_back: int | None = None
    look_ahead: int | None = None
    overlap_window: bool = False
    attn_2d: bool = False
    image_height: int | None = None
    image_width: int | None = None
    use_rpe: bool = False
    block_size: int | None = None
    executor: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)
        self.window(causal=False)
        for name in ("image_height", "image_width"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=1)
                if not self.attn_2d:
                    raise ValueError(f"option {name} needs attn_2d=True")
        if (self.image_height is None) != (self.image_width is None):
            raise ValueError("give both image_height and image_width, or neither (square grid)")
        if self.block_size is not None:
            check_int("block_size", self.block_size, minimum=1)
            if self.attn_2d:
                raise ValueError("option block_size applies to 1D windows only (2D windows run on window_size tiles)")
        check_choice("executor", self.executor, EXECUTOR_NAMES)

    def window(self, *, causal: bool) -> LocalWindow:
        """The validated window geometry (2D grids get their size per input; ``(1, 1)`` stands in here)."""
        return LocalWindow.resolve(
            mode=self.mode,
            window_size=self.window_size,
            look_back=self.look_back,
            look_ahead=self.look_ahead,
            overlap_window=self.overlap_window,
            grid=(1, 1) if self.attn_2d else None,
            causal=causal,
        )


@register(
    "local",
    options=LocalOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=False,
        exact=True,
        deterministic=True,
        time="O(N*w*d)",
        memory="O(N*d)",
        pattern="sliding_window | blockwise_window | window_2d",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        compile_fullgraph=False,
    ),
    functional=local_attention,
    reference=naive_local_attention,
    flops=local_flops,
)
class LocalAttention(AttentionBase):
    """Exact softmax inside a local window (sliding or blockwise, 1D or 2D), run block-sparse."""

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        self.window = options.window(causal=causal)
        self.rpe_table = nn.Parameter(torch.zeros(self.window.rpe_shape(num_heads))) if options.use_rpe else None
        if self.rpe_table is not None:
            nn.init.trunc_normal_(self.rpe_table, std=0.02)

    def grid(self, n: int) -> tuple[int, int] | None:
        """The 2D grid for N tokens (``None`` for 1D)."""
        o: LocalOptions = self.options
        return grid_shape(n, o.image_height, o.image_width) if o.attn_2d else None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: LocalOptions = self.options
        return local_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            window_size=o.window_size,
            mode=o.mode,
            look_back=o.look_back,
            look_ahead=o.look_ahead,
            overlap_window=o.overlap_window,
            grid=self.grid(q.shape[-2]),
            rpe_table=self.rpe_table,
            dropout_p=self.attention_dropout(),
            executor=o.executor,
            block_size=o.block_size,
        )

    def check_decoding(self) -> None:
        """Causal 1D windows decode (a rolling cache); 2D windows refuse (the grid is fixed by the whole input)."""
        super().check_decoding()
        if self.options.attn_2d:
            raise ValueError(
                "local with attn_2d=True has no token-by-token decoding: its 2D grid is fixed by the whole "
                "input (image_height x image_width); decode with a 1D window"
            )

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> WindowCache:
        return window_cache(self.window, k, v, mask)

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, WindowCache]:
        if not isinstance(state, WindowCache):
            raise TypeError(f"local decodes from a WindowCache, got {type(state).__name__}")
        return window_step(self.window, q, k, v, state, rpe_table=self.rpe_table, dropout_p=self.attention_dropout())

    @staticmethod
    def convert_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename efficient-attention ``LocalAttention`` weights to this module's names.

        ``qkv.*`` and ``proj.*`` keep their names; ``local_relative_position_bias_table`` becomes
        ``rpe_table``; the 2D ``relative_position_index`` buffer is dropped (recomputed here).
        """
        renamed = {"local_relative_position_bias_table": "rpe_table"}
        return {renamed.get(k, k): v for k, v in state_dict.items() if k != "relative_position_index"}


def _efficient_attention_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if causal:
        raise ValueError("efficient-attention 'local' has no causal mode")
    check_no_dropout(args, "proj_drop")
    return {
        "mode": "blockwise",
        "window_size": args["window_size"],
        "overlap_window": args["overlap_window"],
        "attn_2d": args["attn_2d"],
        "use_rpe": args["use_rpe"],
    }


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="local",
        mechanism="local",
        defaults={"window_size": 4, "use_rpe": False, "attn_2d": False, "overlap_window": False, **EA_COMMON},
        options=_efficient_attention_options,
        convert=lambda state_dict, args: LocalAttention.convert_official(zero_qkv_bias(state_dict)),
        notes="LocalAttention: mode blockwise, window_size (CLI default 4; constructor 2), overlap_window, "
        "attn_2d (any H x W grid, official needs H = W), use_rpe table -> rpe_table; -5e4 fill (E8) equal on real rows",
    )
)
