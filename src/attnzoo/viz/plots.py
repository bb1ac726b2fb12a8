"""Figures: training curves (the compare job, ``attnzoo curves``) and attention-weight heat maps.

matplotlib is optional (``pip install attnzoo[plot]``); without it :func:`require_matplotlib`
raises ``ImportError`` with that instruction, and callers print it instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attnzoo.io import atomic_open

__all__ = ["plot_attention_maps", "plot_curves", "require_matplotlib"]

MISSING = "plotting needs matplotlib: pip install 'attnzoo[plot]' (or pip install matplotlib)"


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=suffix, dpi=120, bbox_inches="tight")


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str = "dev accuracy",
    title: str = "",
    chance: float | None = None,
    references: Mapping[str, float] | None = None,
) -> None:
    """One line per run: a metric (y) against training progress (x), e.g. dev accuracy vs step or seconds.

    Args:
        curves: ``{name: [(x, y), ...]}``.
        path: output image (``.png``, ``.svg`` or ``.pdf``).
        xlabel, ylabel: axis labels.
        title: figure title.
        chance: draw a dashed grey line at this value (majority class).
        references: ``{label: y}`` dotted horizontal lines (e.g. published accuracies), in the
            colour of the curve of the same name where there is one.
    """
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {}
    for name, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=name)
            colours[name] = line.get_color()
    for label, value in (references or {}).items():
        ax.axhline(value, color=colours.get(label, "black"), linestyle=":", linewidth=1, label=f"{label} (published)")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="majority class")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_attention_maps(maps: Sequence[torch.Tensor], path: str | Path, *, title: str = "", heads: str = "all") -> None:
    """Heat maps of attention weights, one row per layer and one column per head (PSF-Attn / Diffuser style).

    Args:
        maps: per layer, the weights of one example, shape ``(H, T, T)`` (rows: queries, columns: keys).
        path: output image.
        title: figure title.
        heads: ``"all"`` (a column per head) or ``"mean"`` (the head average in one column).
    """
    plt = require_matplotlib()
    grids = [m.float().mean(0, keepdim=True) if heads == "mean" else m.float() for m in maps]
    rows, cols = len(grids), grids[0].shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for layer, grid in enumerate(grids):
        for head in range(cols):
            ax = axes[layer][head]
            ax.imshow(grid[head].cpu().numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"layer {layer} " + ("mean" if heads == "mean" else f"head {head}"), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)
