"""Attention weights of a trained model on one example, materialised densely (small N only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attnzoo.checkpoints import load_checkpoint, load_run_split, model_from_checkpoint
from attnzoo.viz.plots import plot_attention_maps

__all__ = ["MAX_TOKENS", "attention_maps_from_checkpoint", "draw_attention_map"]

MAX_TOKENS = 4096  # T x T weights per head and layer are materialised


def attention_maps_from_checkpoint(
    checkpoint: str | Path, index: int, *, split: str = "dev", data_dir: str | None = None
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Per-layer attention weights ``(H, T, T)`` of example ``index`` of ``split`` under the checkpoint's model.

    T is cropped to the last real token (plus the CLS token when pooling is "cls").

    Returns:
        ``(maps, info)`` with ``info`` holding task, attention, label, prediction and T.

    Raises:
        ValueError: index out of range, too many tokens, or a bad checkpoint.
    """
    from attnzoo import tasks

    state = load_checkpoint(checkpoint)
    config = dict(state["config"])
    if data_dir is not None:
        config["data_dir"] = data_dir
    model, spec = model_from_checkpoint(state)
    dataset = load_run_split(config, split)
    if not 0 <= index < len(dataset):
        raise ValueError(f"--index {index} is out of range: the {split} split has {len(dataset)} examples")
    batch = tasks.collate([dataset[index]])
    with torch.no_grad():
        mask = model.attention_mask(batch)
        if mask.shape[1] > MAX_TOKENS:
            raise ValueError(f"attention maps materialise T x T weights; T = {mask.shape[1]} exceeds {MAX_TOKENS}")
        maps = [m[0] for m in model.attention_maps(batch)]
        prediction = model(batch)[0]
    real = int(mask[0].nonzero().max().item()) + 1 if mask.any() else mask.shape[1]
    maps = [m[:, :real, :real] for m in maps]
    label = batch["label"][0]
    info = {
        "task": config["task"],
        "attention": config["model"]["attention"],
        "index": index,
        "split": split,
        "tokens": real,
        "label": label.tolist(),
        "prediction": prediction.argmax(-1).tolist() if spec.target != "regression" else prediction.item(),
    }
    return maps, info


def draw_attention_map(
    checkpoint: str | Path,
    index: int,
    out: str | Path,
    *,
    split: str = "dev",
    heads: str = "all",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Plot the maps of :func:`attention_maps_from_checkpoint` to ``out`` (PNG/SVG/PDF); returns its info."""
    maps, info = attention_maps_from_checkpoint(checkpoint, index, split=split, data_dir=data_dir)
    title = (
        f"{info['task']} / {info['attention']}: {split} example {index}, label {info['label']}, "
        f"predicted {info['prediction']}"
    )
    plot_attention_maps(maps, out, title=title, heads=heads)
    return info
