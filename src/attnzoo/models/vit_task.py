"""The efficient ViT (:mod:`attnzoo.models.vit`) as a training model for image tasks (``model.arch: vit``).

:class:`ViTClassifier` maps a collated batch of an image task to logits like the encoder models of
:mod:`attnzoo.models.heads`: colour images (``input_kind="image"``, ``input_ids (B, H*W, C)`` uint8
values) or grey pixel ids (``input_kind="pixels"``, ``(B, H*W)``) become ``(B, C, H, W)`` floats in
[-1, 1], augmented in training when the task asks for it (:func:`attnzoo.tasks.images.crop_flip`), and
go through a :class:`~attnzoo.models.vit.VisionTransformer` built from the ``ModelConfig``.

Shape legend: B batch, H x W image, C channels, p patch side, T = (H/p)(W/p) patch tokens, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.models.heads import score
from attnzoo.models.transformer import ModelConfig
from attnzoo.models.vit import VisionTransformer, ViTConfig, grid_attention_options
from attnzoo.registry import make_options
from attnzoo.tasks.images import crop_flip

__all__ = ["VIT_OPTION_FIELDS", "ViTClassifier", "vit_config_for"]

# ViTConfig fields that model.vit_options may set (the others come from the task and the ModelConfig)
VIT_OPTION_FIELDS = ("drop_path_rate", "use_glu", "patchify_stem", "pos_emb", "norm_eps")


def vit_config_for(task: Any, cfg: ModelConfig) -> ViTConfig:
    """The ``ViTConfig`` of ``cfg`` (arch vit) on image task ``task`` (a ``TaskSpec``).

    Raises:
        ValueError: a task without images or class labels, or an unknown ``model.vit_options`` field.
    """
    if task.image_shape is None or task.input_kind not in ("image", "pixels") or task.target != "class":
        raise ValueError(
            f"model.arch vit needs an image classification task; {task.name!r} has {task.input_kind} inputs "
            f"and {task.target} targets"
        )
    unknown = sorted(set(cfg.vit_options) - set(VIT_OPTION_FIELDS))
    if unknown:
        raise ValueError(f"model.vit_options: unknown field(s) {unknown}; allowed: {list(VIT_OPTION_FIELDS)}")
    return ViTConfig(
        image_size=tuple(task.image_shape),
        patch_size=cfg.patch_size,
        in_chans=task.num_features if task.input_kind == "image" else 1,
        num_classes=task.num_classes,
        dim=cfg.dim,
        depth=cfg.num_layers,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.dim,
        drop_rate=cfg.dropout,
        attn_drop_rate=cfg.attention_dropout,
        attention=cfg.attention,
        attention_options=dict(cfg.attention_options),
        **cfg.vit_options,
    )


class ViTClassifier(nn.Module):
    """``forward(batch) -> logits (B, K)``; ``loss``, ``length``, ``grid``, ``attention_mask`` and ``attention_maps``
    as the task models.

    Each block's attention is ``cfg.layer_spec(i)`` (so ``model.layer_attention`` works), 2D mechanisms
    with the patch grid filled in (:func:`~attnzoo.models.vit.grid_attention_options`).
    """

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.task, self.cfg = task, cfg
        self.vit_cfg = vit_config_for(task, cfg)

        def attention(index: int) -> nn.Module:
            name, options = cfg.layer_spec(index)
            options = grid_attention_options(name, options, self.vit_cfg.grid)
            ready = make_options(attnzoo.options(name), options, context=name)
            return attnzoo.build(name, cfg.dim, cfg.num_heads, dropout=cfg.attention_dropout, options=ready)

        self.vit = VisionTransformer(self.vit_cfg, attention)

    @property
    def length(self) -> int:
        """Patch tokens T the attention reads."""
        return self.grid[0] * self.grid[1]

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid ``(H/p, W/p)``."""
        return self.vit_cfg.grid

    def images(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's images ``(B, C, H, W)`` scaled to [-1, 1] (grey pixel ids shifted by one are unshifted)."""
        ids = batch["input_ids"]
        height, width = self.vit_cfg.image_hw
        if self.task.input_kind == "image":
            pixels = ids.view(ids.shape[0], height, width, -1).permute(0, 3, 1, 2)
        else:
            pixels = (ids - (self.task.vocab_size - 256)).view(ids.shape[0], 1, height, width)
        return pixels.float().div(127.5).sub(1.0)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        images = self.images(batch)
        if self.training and self.task.augmentation == "crop-flip":
            images = crop_flip(images)
        return self.vit(images)

    def loss(
        self, outputs: Tensor, batch: dict[str, Tensor], label_smoothing: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean loss, number correct, number scored)`` (see :func:`attnzoo.models.heads.score`)."""
        return score(self.task, outputs, batch["label"], label_smoothing)

    def attention_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, T)`` bool: every patch token is real."""
        ids = batch["input_ids"]
        return torch.ones(ids.shape[0], self.length, dtype=torch.bool, device=ids.device)

    @torch.no_grad()
    def attention_maps(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """Per-block dense attention weights ``(B, H, T, T)`` over the patch tokens (small T: materialised)."""
        vit = self.vit
        x = vit.patch_embed(self.images(batch))
        if vit.pos_embed is not None:
            x = x + vit.pos_embed
        x = x.flatten(1, 2)
        maps = []
        for block in vit.blocks:
            maps.append(block.attn.attention_map(block.norm1(x), None))
            x = block(x)
        return maps
