"""Efficient vision Transformer: the EVA/LARA seed's ``vit/models/efficient_vit.py`` architecture.

HKUNLP/efficient-attention's ``EfficientTransformer`` is a DeiT without class token (spec
efficient-attention-eva-lara-longnet §11.1): a patch embedding (``patchify_stem``), a learned position
embedding over the ``(H/p, W/p)`` patch grid, pre-norm blocks ``x + DropPath(Attn(LN x))``,
``x + DropPath(MLP(LN x))`` (MLP ratio 4, optional GLU), a final LayerNorm, the mean over all patches and
a linear head. Any registered mechanism is the attention: it reads the patches as a row-major sequence
of ``T = (H/p) (W/p)`` tokens, and a 2D mechanism (options with ``attn_2d=True``) gets the grid shape
in ``image_height`` / ``image_width``.

Shape legend: B batch, C input channels, H x W image, p patch side, (h, w) = (H/p, W/p) the patch grid,
T = h w tokens, D model width, K classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import attnzoo

__all__ = [
    "PATCHIFY_STEMS",
    "VIT_CONFIGS",
    "DropPath",
    "GatedMLP",
    "PatchEmbed",
    "ViTBlock",
    "ViTConfig",
    "VisionTransformer",
    "grid_attention_options",
    "init_vit_weights",
    "vit_config",
]

PATCHIFY_STEMS = ("default", "conv", "hmlp")

AttentionFactory = Callable[[int], nn.Module]  # layer index -> (B, T, D) -> (B, T, D) attention


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of :class:`VisionTransformer` (the official ``EfficientTransformer`` arguments).

    Attributes:
        image_size: input side (square images) or ``(H, W)``; official ``input_size``.
        patch_size: patch side p; H and W must be multiples of it.
        in_chans: input channels C.
        num_classes: K; 0 gives the pooled features ``(B, D)`` (no head).
        dim: model width D (official ``embed_dim``).
        depth: number of blocks.
        num_heads: attention heads; D must be divisible by it.
        mlp_ratio: MLP hidden width = ``int(D * mlp_ratio)`` (two thirds of it per branch with GLU).
        use_glu: the MLP is ``fc2(GELU(a) * b)`` with ``(a, b) = fc1(x)`` split in two.
        patchify_stem: ``default`` (one p x p conv), ``conv`` (three 3x3 stride-2 convs, p 8 or 16) or
            ``hmlp`` (hierarchical 2x2 convs, p 8 or 16), as the official ``PatchEmbed``.
        pos_emb: add the learned ``(h, w, D)`` position embedding (official ``not no_pos_emb``).
        drop_rate: dropout after the position embedding, in the MLP and after the attention output.
        attn_drop_rate: attention-probability dropout (mechanisms that have probabilities).
        drop_path_rate: stochastic depth of the last block; block i gets ``rate * i / (depth - 1)``.
        attention: registered mechanism name.
        attention_options: its options; with ``attn_2d=True`` the grid shape is filled in.
        norm_eps: LayerNorm epsilon (official 1e-6).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    use_glu: bool = False
    patchify_stem: str = "default"
    pos_emb: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attention: str = "softmax"
    attention_options: dict[str, Any] = field(default_factory=dict)
    norm_eps: float = 1e-6

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the input images."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w) = (H/p, W/p)``, the patch grid."""
        height, width = self.image_hw
        return (height // self.patch_size, width // self.patch_size)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any invalid value."""
        for name in ("patch_size", "in_chans", "dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"vit.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"vit.num_classes must be >= 0, got {self.num_classes}")
        if self.dim % self.num_heads:
            raise ValueError(f"vit.dim ({self.dim}) must be divisible by vit.num_heads ({self.num_heads})")
        height, width = self.image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"vit.image_size {height}x{width} is not a multiple of vit.patch_size {self.patch_size}")
        if self.patchify_stem not in PATCHIFY_STEMS:
            raise ValueError(
                f"vit.patchify_stem must be one of {', '.join(PATCHIFY_STEMS)}; got {self.patchify_stem!r}"
            )
        if self.patchify_stem != "default" and self.patch_size not in (8, 16):
            raise ValueError(
                f"vit.patchify_stem {self.patchify_stem!r} needs patch_size 8 or 16, got {self.patch_size}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"vit.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"vit.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)


# The official registry (evit_<size>_p<patch>: width and default heads per size), plus a CPU-sized model.
_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    **{
        f"evit_{size}_p{patch}": {"dim": dim, "num_heads": heads, "patch_size": patch, "depth": 12}
        for size, (dim, heads) in _SIZES.items()
        for patch in (16, 8, 4)
    },
    "evit_cpu": {"image_size": 32, "patch_size": 4, "dim": 64, "num_heads": 4, "depth": 4, "drop_path_rate": 0.0},
}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """The named configuration (``VIT_CONFIGS``: ``evit_{tiny,small,base}_p{16,8,4}``, ``evit_cpu``) with overrides.

    Raises:
        ValueError: an unknown name or field.
    """
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT configuration {name!r}; known: {', '.join(VIT_CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {', '.join(unknown)}; fields: {', '.join(sorted(fields))}")
    return ViTConfig(**{**VIT_CONFIGS[name], **overrides})


def grid_attention_options(name: str, options: dict[str, Any], grid: tuple[int, int]) -> dict[str, Any]:
    """``options`` of mechanism ``name`` with the patch grid as ``image_height/width`` where it attends in 2D.

    Only a mechanism whose options have those fields and ``attn_2d`` set gets them (unset ones only); a
    1D mechanism reads the row-major sequence and its options are returned unchanged.
    """
    fields = {f.name for f in dataclasses.fields(attnzoo.options(name))}
    if not options.get("attn_2d") or not {"image_height", "image_width"} <= fields:
        return dict(options)
    return {"image_height": grid[0], "image_width": grid[1], **options}


def init_vit_weights(module: nn.Module) -> None:
    """The official ``_init_weights``, for ``model.apply``: Linear ``trunc_normal(0.02)``, bias 0; LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's whole residual branch with probability ``p``, scale the rest.

    ``x: (B, ...)`` -> same shape; identity in eval mode or with ``p = 0``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """Images ``(B, C, H, W)`` -> patch features ``(B, h, w, D)`` through the official ``patchify_stem``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.image_hw, dim, chans = cfg.image_hw, cfg.dim, cfg.in_chans
        quarter = dim // 4
        if cfg.patchify_stem == "default":
            self.proj: nn.Module = nn.Conv2d(chans, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        elif cfg.patchify_stem == "hmlp":  # 2x2 convs after a first split of p / 4 (Groupnorm(1) = LayerNorm)
            first = cfg.patch_size // 4
            self.proj = nn.Sequential(
                nn.Conv2d(chans, quarter, kernel_size=first, stride=first),
                nn.GroupNorm(1, quarter),
                nn.GELU(),
                nn.Conv2d(quarter, quarter, kernel_size=2, stride=2),
                nn.GroupNorm(1, quarter),
                nn.GELU(),
                nn.Conv2d(quarter, dim, kernel_size=2, stride=2),
                nn.GroupNorm(1, dim),
            )
        else:  # conv: three 3x3 stride-2 convs (/8), then 1x1 (p 8) or 2x2 stride 2 (p 16)
            last = 1 if cfg.patch_size == 8 else 2
            self.proj = nn.Sequential(
                nn.Conv2d(chans, quarter, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(1, quarter),
                nn.ReLU(),
                nn.Conv2d(quarter, quarter, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(1, quarter),
                nn.ReLU(),
                nn.Conv2d(quarter, dim, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(1, dim),
                nn.ReLU(),
                nn.Conv2d(dim, dim, kernel_size=last, stride=last),
            )

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(
                f"images must be (B, C, {self.image_hw[0]}, {self.image_hw[1]}), got {tuple(images.shape)}"
            )
        return self.proj(images).permute(0, 2, 3, 1)


class GatedMLP(nn.Module):
    """MLP ``(..., D) -> (..., D)``: ``fc2(Drop(GELU(fc1 x)))``; with GLU ``fc2(Drop(GELU(a) * b))``, ``a, b = fc1 x``.

    With GLU the hidden width is ``int(hidden * 2 // 3)`` per branch (the official ``GatedMlp``).
    """

    def __init__(self, dim: int, hidden: int, dropout: float, use_glu: bool) -> None:
        super().__init__()
        self.use_glu = use_glu
        if use_glu:
            hidden = int(hidden * 2 // 3)
        self.fc1 = nn.Linear(dim, hidden * (2 if use_glu else 1))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_glu:
            a, b = self.fc1(x).chunk(2, dim=-1)
            x = self.act(a) * b
        else:
            x = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(x)))


class ViTBlock(nn.Module):
    """Pre-norm block on ``(B, T, D)``: ``x + DropPath(Drop(Attn(LN x)))``, ``x + DropPath(MLP(LN x))``."""

    def __init__(self, cfg: ViTConfig, attention: nn.Module, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = attention
        self.attn_drop = nn.Dropout(cfg.drop_rate)  # the official attention's proj_drop
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = GatedMLP(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.drop_rate, cfg.use_glu)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn_drop(self.attn(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """The efficient ViT: ``images (B, C, H, W) -> logits (B, K)`` (features ``(B, D)`` when ``num_classes = 0``).

    Args:
        cfg: the architecture (validated).
        attention: ``factory(layer_index) -> module`` for each block's attention, a ``(B, T, D) -> (B, T, D)``
            module over the row-major patch sequence; default: ``attnzoo.build(cfg.attention, ...)``
            with the grid filled into 2D options (:func:`grid_attention_options`).
    """

    def __init__(self, cfg: ViTConfig, attention: AttentionFactory | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if attention is None:
            options = grid_attention_options(cfg.attention, dict(cfg.attention_options), cfg.grid)

            def attention(index: int) -> nn.Module:
                return attnzoo.build(cfg.attention, cfg.dim, cfg.num_heads, dropout=cfg.attn_drop_rate, **options)

        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, *cfg.grid, cfg.dim)) if cfg.pos_emb else None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([ViTBlock(cfg, attention(i), rates[i]) for i in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(init_vit_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay (the official set: the position embedding)."""
        return {"pos_embed"}

    def forward_features(self, images: Tensor) -> Tensor:
        """Mean-pooled final-norm features ``(B, D)`` of ``images (B, C, H, W)``."""
        x = self.patch_embed(images)
        if self.pos_embed is not None:
            x = self.pos_drop(x + self.pos_embed)
        x = x.flatten(1, 2)  # (B, T, D), row-major over the grid
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``images (B, C, H, W)``."""
        return self.head(self.forward_features(images))
