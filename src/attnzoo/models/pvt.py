"""PVTv2 with any attention: the EVA/LARA seed's ``vit/models/pvt_legacy.py`` model (``pvt_medium2`` = PVTv2-B3).

Four stages. Stage i: an overlapping patch embedding (a k x k convolution with stride s, k = 7 and s = 4 for
the first stage, k = 3 and s = 2 after, padding k // 2; then LayerNorm), ``depths[i]`` blocks on its
``(h_i, w_i)`` grid and a LayerNorm (eps 1e-6). A block is pre-norm, ``x + DropPath(Attn(LN x))`` then
``x + DropPath(MLP(LN x))`` with ``MLP = fc1 -> 3 x 3 depthwise conv on the grid -> GELU -> Drop -> fc2 -> Drop``.
The stages with ``sr_ratios[i] > 1`` attend with ``attention`` (the seed replaces PVTv2's spatial-reduction
attention there), the others with softmax. Logits: a linear head on
the mean over the last grid.

Shapes: ``images (B, C, S, S) -> logits (B, K)``; inside stage i, ``x`` is ``(B, h_i, w_i, D_i)`` and the
attention reads it as ``(B, h_i * w_i, D_i)``, row-major.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.models.vit import DropPath, grid_attention_options, init_vit_weights

__all__ = ["PVT_CONFIGS", "PVTConfig", "PyramidVisionTransformer", "pvt_config"]

STAGES = 4

# stage, grid (h, w) -> (B, h w, D) -> (B, h w, D) attention of one block
PVTAttentionFactory = Callable[[int, tuple[int, int]], nn.Module]


@dataclass(frozen=True)
class PVTConfig:
    """A PVTv2 (defaults: the seed's ``pvt_medium2``, PVTv2-B3, at 224 px with 1000 classes).

    Attributes:
        image_size, in_chans, num_classes: square input side, input channels, classes (0 = features only).
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: per stage (four entries each).
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the attention and in the MLP, on the
            attention weights, and the stochastic-depth rate of the last block (linear from 0).
        attention, attention_options: the mechanism of the stages with ``sr_ratio > 1`` and its options
            (2D mechanisms get each stage's grid as ``image_height/width``).
    """

    image_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (3, 4, 18, 3)
    num_heads: tuple[int, ...] = (2, 4, 10, 16)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention: str = "softmax"
    attention_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any invalid value."""
        for name in ("embed_dims", "depths", "num_heads", "mlp_ratios", "sr_ratios"):
            value = getattr(self, name)
            if len(value) != STAGES or any(v <= 0 for v in value):
                raise ValueError(f"PVTConfig.{name} needs {STAGES} positive entries, got {value!r}")
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ValueError(f"PVTConfig: embed_dims {self.embed_dims} must divide by num_heads {self.num_heads}")
        if self.image_size < 32 or self.in_chans < 1 or self.num_classes < 0:
            raise ValueError(
                "PVTConfig needs image_size >= 32 (four stages halve it to a 1 x 1 grid), in_chans >= 1 and "
                f"num_classes >= 0; got {self.image_size}, {self.in_chans}, {self.num_classes}"
            )
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"PVTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grids(self) -> list[tuple[int, int]]:
        """The ``(h, w)`` grid of each stage (the convolutions' output sizes)."""
        side, grids = self.image_size, []
        for stage in range(STAGES):
            kernel, stride = _patch_geometry(stage)
            side = (side + 2 * (kernel // 2) - kernel) // stride + 1
            grids.append((side, side))
        return grids

    def stage_attention(self, stage: int) -> tuple[str, dict[str, Any]]:
        """``(mechanism, options)`` of stage ``stage``'s blocks (softmax where ``sr_ratio`` is 1)."""
        if self.sr_ratios[stage] == 1:
            return "softmax", {}
        return self.attention, grid_attention_options(self.attention, dict(self.attention_options), self.grids[stage])


PVT_CONFIGS: dict[str, dict[str, Any]] = {  # the official pvt_*2 models (heads of width 32), on base_config
    "pvt_tiny2": {"depths": (2, 2, 2, 2)},
    "pvt_small2": {"depths": (3, 4, 6, 3)},
    "pvt_medium2": {"depths": (3, 4, 18, 3)},
    "pvt_base2": {"depths": (3, 8, 27, 3)},
    "pvt_large2": {"depths": (3, 6, 40, 3), "mlp_ratios": (4, 4, 4, 4)},
}


def pvt_config(name: str, **overrides: Any) -> PVTConfig:
    """The official ``name`` (a key of :data:`PVT_CONFIGS`) with ``overrides``; validated.

    Raises:
        ValueError: an unknown name or an invalid field.
    """
    if name not in PVT_CONFIGS:
        raise ValueError(f"unknown PVT model {name!r}; choose from {', '.join(PVT_CONFIGS)}")
    cfg = PVTConfig(**{**PVT_CONFIGS[name], **overrides})
    cfg.validate()
    return cfg


def _patch_geometry(stage: int) -> tuple[int, int]:
    """``(kernel, stride)`` of stage ``stage``'s patch embedding."""
    return (7, 4) if stage == 0 else (3, 2)


def init_pvt_weights(module: nn.Module) -> None:
    """The official ``_init_weights``: :func:`~attnzoo.models.vit.init_vit_weights` (Linear, LayerNorm), and
    Conv2d ``N(0, 2 / fan_out)`` with ``fan_out = k_h k_w out / groups``, bias 0."""
    init_vit_weights(module)
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class OverlapPatchEmbed(nn.Module):
    """``(B, C, H, W) -> (B, h, w, D)``: a strided convolution with overlapping windows, then LayerNorm."""

    def __init__(self, stage: int, in_chans: int, dim: int) -> None:
        super().__init__()
        kernel, stride = _patch_geometry(stage)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class DWConv(nn.Module):
    """3 x 3 depthwise convolution over the grid: ``(B, h, w, D) -> (B, h, w, D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PVTMlp(nn.Module):
    """``fc1 -> DWConv -> GELU -> Drop -> fc2 -> Drop`` on ``(B, h, w, D)``."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.dwconv(self.fc1(x))))))


class PVTBlock(nn.Module):
    """Pre-norm block on ``(B, h, w, D)``; the attention reads the grid as a row-major ``(B, h w, D)`` sequence."""

    def __init__(self, dim: int, attention: nn.Module, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attention
        self.attn_drop = nn.Dropout(drop)  # the official attention's proj_drop
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PVTMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        attended = self.attn(self.norm1(x).flatten(1, 2)).view_as(x)
        x = x + self.drop_path(self.attn_drop(attended))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PyramidVisionTransformer(nn.Module):
    """PVTv2: ``images (B, C, S, S) -> logits (B, K)`` (features ``(B, D_4)`` when ``num_classes = 0``).

    Module names are the official ones (``patch_embed{i}``, ``block{i}``, ``norm{i}``, ``head``), so an
    official state dict maps one to one except inside the attention modules.

    Args:
        cfg: the architecture (validated).
        attention: ``factory(stage, grid) -> module`` for each block's attention; default
            ``attnzoo.build`` with :meth:`PVTConfig.stage_attention`.
    """

    def __init__(self, cfg: PVTConfig, attention: PVTAttentionFactory | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if attention is None:

            def attention(stage: int, grid: tuple[int, int]) -> nn.Module:
                name, options = cfg.stage_attention(stage)
                dim, heads = cfg.embed_dims[stage], cfg.num_heads[stage]
                return attnzoo.build(name, dim, heads, dropout=cfg.attn_drop_rate, **options)

        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        first = 0
        for stage, grid in enumerate(cfg.grids):
            dim = cfg.embed_dims[stage]
            in_chans = cfg.in_chans if stage == 0 else cfg.embed_dims[stage - 1]
            blocks = [
                PVTBlock(dim, attention(stage, grid), cfg.mlp_ratios[stage], cfg.drop_rate, rates[first + j])
                for j in range(cfg.depths[stage])
            ]
            first += cfg.depths[stage]
            self.add_module(f"patch_embed{stage + 1}", OverlapPatchEmbed(stage, in_chans, dim))
            self.add_module(f"block{stage + 1}", nn.ModuleList(blocks))
            self.add_module(f"norm{stage + 1}", nn.LayerNorm(dim, eps=1e-6))
        self.head = nn.Linear(cfg.embed_dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(init_pvt_weights)

    def forward_features(self, images: Tensor) -> Tensor:
        """Mean-pooled features ``(B, D_4)`` of ``images (B, C, S, S)``."""
        x = images
        for stage in range(1, STAGES + 1):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x)
            x = getattr(self, f"norm{stage}")(x)
            if stage < STAGES:
                x = x.permute(0, 3, 1, 2)
        return x.mean(dim=(1, 2))

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``images (B, C, S, S)``."""
        return self.head(self.forward_features(images))
