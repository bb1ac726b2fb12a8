"""Shared pieces of the randomized mechanisms (LARA, EVA, causal EVA, RA): seeded draws, proposal nets, grids."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase

__all__ = [
    "EA_COMMON",
    "SampledAttention",
    "check_grid_options",
    "check_no_dropout",
    "grid_options",
    "grid_shape",
    "proposal_net",
    "zero_qkv_bias",
]


# Constructor arguments every efficient-attention ``MultiheadAttention`` subclass takes (official defaults).
EA_COMMON: dict[str, Any] = {"qkv_bias": True, "attn_drop": 0.0, "proj_drop": 0.0, "fp32": False}


def proposal_net(width: int, layer_norm: bool = True) -> nn.Sequential:
    """efficient-attention's adaptive proposal map ``Linear(width, width)`` (+ ``LayerNorm(width)``).

    Init as the official base class: Linear weight ``trunc_normal(0.02)``, bias 0; LayerNorm (1, 0).
    """
    linear = nn.Linear(width, width)
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(linear, nn.LayerNorm(width)) if layer_norm else nn.Sequential(linear)


def grid_shape(n: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The row-major 2D grid of N tokens: ``(height, width)`` if given, else a square.

    Raises:
        ValueError: the sizes do not multiply to N, or N is not square when they are not given.
    """
    if height is not None and width is not None:
        if height * width != n:
            raise ValueError(f"grid {height}x{width} has {height * width} cells but the sequence has N={n}")
        return (height, width)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"attn_2d with N={n} tokens: N is not square; set image_height and image_width")
    return (side, side)


def check_grid_options(opts: Any) -> None:
    """Validate ``attn_2d`` / ``image_height`` / ``image_width`` of an options dataclass (both sizes or neither).

    Raises:
        ValueError: a size without ``attn_2d``, only one of the two sizes, a size below 1.
    """
    for name in ("image_height", "image_width"):
        value = getattr(opts, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"option {name} must be >= 1, got {value}")
            if not opts.attn_2d:
                raise ValueError(f"option {name} needs attn_2d=True")
    if (opts.image_height is None) != (opts.image_width is None):
        raise ValueError("give both image_height and image_width, or neither (square grid)")


def grid_options(seq_shape: Any) -> dict[str, Any]:
    """``from_official`` helper: the official ``[B, H, W, C]`` input shape ``(H, W)`` as build options."""
    if seq_shape is None:
        return {}
    return {"attn_2d": True, "image_height": seq_shape[0], "image_width": seq_shape[1]}


def check_no_dropout(args: dict[str, Any], *names: str) -> None:
    """``from_official`` helper: official dropouts other than 0 are not reproduced; say so."""
    for name in names:
        if args.get(name, 0.0) not in (0, 0.0):
            raise ValueError(f"official argument {name}={args[name]!r} is not supported here (only 0.0)")


def zero_qkv_bias(state_dict: dict[str, Tensor], prefix: str = "qkv") -> dict[str, Tensor]:
    """Official ``qkv_bias=False`` checkpoints have no ``qkv.bias``; attnzoo's is then zero."""
    weight = state_dict.get(f"{prefix}.weight")
    if weight is not None and f"{prefix}.bias" not in state_dict:
        state_dict[f"{prefix}.bias"] = weight.new_zeros(weight.shape[0])
    return state_dict


class SampledAttention(AttentionBase):
    """An attention module that draws Gaussian (or categorical) samples in training, reproducibly.

    Draws come from the module's own ``torch.Generator`` (seeded with ``options.seed``, or from the
    global RNG once at construction when it is ``None``), so the global RNG is never touched in
    forward. ``forward(x, mask, draws=[...])`` injects the draws instead, in the order the
    mechanism documents (e.g. the official code's ``randn_like(mu)``), for deterministic comparisons.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        seed = options.seed if options.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        self._draws: list[Tensor] | None = None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        draws: list[Tensor] | None = None,
    ) -> Tensor:
        """As :meth:`AttentionBase.forward`; ``draws`` replaces the module's random draws for this call, in order."""
        self._draws = None if draws is None else list(draws)
        try:
            return super().forward(x, mask, context=context, context_mask=context_mask)
        finally:
            self._draws = None

    def take_draw(self, shape: tuple[int, ...], make: Callable[[torch.Generator], Tensor]) -> Tensor:
        """The next injected draw (checked against ``shape``), else ``make(self.generator)``."""
        if self._draws is None:
            return make(self.generator)
        if not self._draws:
            raise ValueError(f"draws: ran out of injected draws; the next needs shape {tuple(shape)}")
        draw = self._draws.pop(0)
        if tuple(draw.shape) != tuple(shape):
            raise ValueError(f"draws: expected a draw of shape {tuple(shape)}, got {tuple(draw.shape)}")
        return draw

    def gaussian(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The next standard Gaussian draw of ``shape`` in ``like``'s dtype and device."""
        draw = self.take_draw(shape, lambda gen: torch.randn(shape, generator=gen, dtype=torch.float64))
        return draw.to(like)
