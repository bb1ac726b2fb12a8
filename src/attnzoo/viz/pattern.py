"""``attnzoo pattern``: draw the attention pattern of a mechanism as the seed papers do (a black
N x N matrix of attended pairs), one panel per head or per butterfly stage where they differ.

The pattern is read off the module itself (:meth:`AttentionBase.attention_map` on a seeded random
input), so what is drawn is what runs: for sparse patterns the attended pairs, for Diffuser the
effective multi-hop operator ``sum_k c_k A^k`` (pairs within K hops), for PSF the factor product.

With matplotlib the figure has one panel per distinct pattern, axes labelled key position /
query position and a title naming the mechanism, N and its options; the format follows the file
suffix (png, svg, pdf, jpg, ...). ``--raw`` (and the fallback without matplotlib, PNG only) writes
the exact-pixel image: each attended pair is ``scale`` x ``scale`` black pixels, no axes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "draw_pattern_figure",
    "grid_panels",
    "pattern_grid",
    "pattern_panels",
    "register_commands",
    "render_panels",
    "write_pattern_png",
]

MAX_LENGTH = 4096
GAP = 4  # white columns between panels


def _maps(name: str, length: int, options: dict[str, Any], heads: int, seed: int) -> torch.Tensor:
    """``(H, N, N)`` float64 absolute attention weights of ``name`` with ``options``."""
    import attnzoo

    torch.manual_seed(seed)
    module = attnzoo.build(name, 8 * heads, heads, **options).double().eval()
    x = torch.randn(1, length, 8 * heads, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return module.attention_map(x)[0].abs()


def pattern_panels(
    name: str, length: int, options: dict[str, Any] | None = None, *, heads: int = 4, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """The panels to draw: ``[(title, weights (N, N) >= 0), ...]``.

    Heads with the same attended pairs share a panel. A mechanism whose options name a
    ``layer_index_option`` (butterfly's ``stage``) gets one panel per stage unless it is set:
    stages 0, 1, ... until the pattern repeats (at most 8).

    Raises:
        ValueError: an unknown mechanism or option, ``length`` outside ``[1, 4096]``.
    """
    import attnzoo

    if not 1 <= length <= MAX_LENGTH:
        raise ValueError(f"--length must be in [1, {MAX_LENGTH}], got {length}")
    options = dict(options or {})
    per_layer = getattr(attnzoo.options(name), "layer_index_option", None)
    stages: list[int | None] = [None]
    if per_layer is not None and per_layer not in options:
        stages = list(range(8))
    panels: list[tuple[str, np.ndarray]] = []
    first: np.ndarray | None = None
    for stage in stages:
        opts = options if stage is None else {**options, per_layer: stage}
        maps = _maps(name, length, opts, heads, seed).numpy()
        if stage is not None and first is not None and np.array_equal(maps[0] > 0, first):
            break
        if stage is not None and first is None:
            first = maps[0] > 0
        groups: list[tuple[list[int], np.ndarray]] = []
        for h, m in enumerate(maps):
            same = next((g for g in groups if np.array_equal(g[1] > 0, m > 0)), None)
            if same is None:
                groups.append(([h], m))
            else:
                same[0].append(h)
        for members, m in groups:
            where = "" if stage is None else f"stage {stage}, "
            label = "all heads" if len(groups) == 1 else "heads " + ",".join(map(str, members))
            panels.append((f"{name} {where}{label}", m))
    return panels


def pattern_grid(length: int, options: dict[str, Any]) -> tuple[int, int] | None:
    """The ``(h, w)`` token grid of a 2D mechanism (``attn_2d`` set): ``image_height`` x ``image_width``, else
    the square of side ``sqrt(length)``; None for 1D options.

    Raises:
        ValueError: the grid does not hold ``length`` tokens.
    """
    if not options.get("attn_2d"):
        return None
    side = math.isqrt(length)
    grid = (int(options.get("image_height") or side), int(options.get("image_width") or side))
    if grid[0] * grid[1] != length:
        raise ValueError(
            f"attn_2d: a {grid[0]} x {grid[1]} grid does not hold --length {length} tokens; give a square "
            "length or image_height/image_width"
        )
    return grid


def grid_panels(
    panels: list[tuple[str, np.ndarray]], grid: tuple[int, int], query: tuple[int, int]
) -> list[tuple[str, np.ndarray]]:
    """Each panel's weights ``(N, N)`` of the token at grid cell ``query = (row, col)``, as the key grid ``(h, w)``.

    Raises:
        ValueError: ``query`` outside the grid.
    """
    h, w = grid
    if not (0 <= query[0] < h and 0 <= query[1] < w):
        raise ValueError(f"--query {query[0]},{query[1]} is outside the {h} x {w} grid")
    index = query[0] * w + query[1]
    return [(f"{title}, query {query}", weights[index].reshape(h, w)) for title, weights in panels]


def render_panels(panels: list[tuple[str, np.ndarray]], *, scale: int = 1, style: str = "mask") -> np.ndarray:
    """A uint8 image: panels side by side (``GAP * scale`` white columns apart), each N x N cells of
    ``scale`` pixels. ``style="mask"``: attended = 0 (black), else 255. ``style="weights"``: attended
    cells 54..254, darker for larger weights (log scale); unattended 255.
    """
    if style not in ("mask", "weights"):
        raise ValueError(f"--style must be mask or weights, got {style!r}")
    cells = []
    for _, weights in panels:
        img = np.full(weights.shape, 255, dtype=np.uint8)
        on = weights > 0
        if style == "mask" or not on.any():
            img[on] = 0
        else:
            logs = np.log(weights[on])
            span = max(float(logs.max() - logs.min()), 1e-12)
            img[on] = np.round(254 - 200 * (logs - logs.min()) / span).astype(np.uint8)
        cells.append(np.kron(img, np.ones((scale, scale), dtype=np.uint8)))
    gap = np.full((cells[0].shape[0], GAP * scale), 255, dtype=np.uint8)
    parts = [part for cell in cells for part in (cell, gap)][:-1]
    return np.concatenate(parts, axis=1)


def write_pattern_png(
    name: str,
    length: int,
    path: str | Path,
    options: dict[str, Any] | None = None,
    *,
    heads: int = 4,
    scale: int | None = None,
    style: str = "mask",
    seed: int = 0,
) -> list[str]:
    """Draw ``name``'s pattern for ``length`` tokens into PNG ``path``; returns the panel titles.

    ``scale`` (pixels per cell) defaults to ``max(1, 512 // length)``.
    """
    from attnzoo.tasks.png import write_png_gray

    panels = pattern_panels(name, length, options, heads=heads, seed=seed)
    image = render_panels(panels, scale=scale or max(1, 512 // length), style=style)
    write_png_gray(path, image)
    return [title for title, _ in panels]


def draw_pattern_figure(
    panels: list[tuple[str, np.ndarray]],
    path: str | Path,
    title: str,
    *,
    style: str = "mask",
    labels: tuple[str, str] = ("key position", "query position"),
) -> None:
    """Save ``panels`` (from :func:`pattern_panels` or :func:`grid_panels`) as a matplotlib figure in the
    format of ``path``'s suffix.

    One subplot per panel (the :func:`render_panels` image, one cell per entry), axes ``labels`` (x, y),
    the panel's title above it and ``title`` above all.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: a suffix matplotlib cannot write (the message lists those it can).
    """
    from attnzoo.io import atomic_open
    from attnzoo.viz.plots import require_matplotlib

    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.4, 3.6), squeeze=False)
    suffix = Path(path).suffix.lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if suffix not in formats:
        plt.close(fig)
        raise ValueError(f"--out {str(path)!r}: cannot write .{suffix} figures; use one of .{', .'.join(formats)}")
    for ax, (panel_title, weights) in zip(axes[0], panels, strict=True):
        rows, cols = weights.shape
        ax.imshow(
            render_panels([(panel_title, weights)], style=style),
            cmap="gray",
            vmin=0,
            vmax=255,
            extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
            interpolation="nearest",
        )
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(panel_title, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format=suffix, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)


def _figure_title(name: str, length: int, options: dict[str, Any], style: str) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in options.items())
    what = "attended pairs" if style == "mask" else "attention weights (log scale)"
    return f"{name}, N = {length}" + (f" ({shown})" if shown else "") + f": {what}"


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    import attnzoo
    from attnzoo.options import parse_option_string

    cls = attnzoo.options(args.name)
    options = dict(parse_option_string(cls, text) for text in args.option)
    raw = args.raw
    if not raw and not _has_matplotlib():
        if Path(args.out).suffix.lower() != ".png":
            raise ImportError(
                f"--out {args.out}: a figure needs matplotlib (pip install 'attnzoo[plot]'); without it only "
                ".png is written (the exact-pixel image, --raw)"
            )
        raw = True
    if raw and Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: --raw writes PNG only; name the file .png")
    grid = pattern_grid(args.length, options)
    if raw and grid is None:
        titles = write_pattern_png(
            args.name, args.length, args.out, options, heads=args.heads, scale=args.scale, style=args.style
        )
    else:
        panels = pattern_panels(args.name, args.length, options, heads=args.heads)
        labels = ("key position", "query position")
        if grid is not None:
            query = tuple(int(v) for v in args.query.split(",")) if args.query else (grid[0] // 2, grid[1] // 2)
            panels, labels = grid_panels(panels, grid, query), ("key column", "key row")  # type: ignore[arg-type]
        if raw:
            from attnzoo.tasks.png import write_png_gray

            write_png_gray(
                args.out, render_panels(panels, scale=args.scale or max(1, 256 // max(grid)), style=args.style)
            )  # type: ignore[arg-type]
        else:
            title = _figure_title(args.name, args.length, options, args.style)
            draw_pattern_figure(panels, args.out, title, style=args.style, labels=labels)
        titles = [title for title, _ in panels]
    print(f"wrote {args.out}" + (" (exact pixels)" if raw else "") + ": " + "; ".join(titles))
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo pattern`` to the CLI."""
    parser = subparsers.add_parser(
        "pattern",
        help="draw a mechanism's attention pattern (a matplotlib figure, or exact pixels with --raw)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="registered mechanism, e.g. local, dilated, butterfly, diffuser")
    parser.add_argument("--length", type=int, required=True, help="sequence length N (<= 4096)")
    parser.add_argument("--option", action="append", default=[], metavar="K=V", help="mechanism option (repeat)")
    parser.add_argument("--heads", type=int, default=4, help="heads to draw (default 4)")
    parser.add_argument(
        "--query",
        metavar="ROW,COL",
        help="2D mechanisms (attn_2d): draw the keys of this grid cell's query on the grid (default: the centre)",
    )
    parser.add_argument("--scale", type=int, default=None, help="--raw: pixels per cell (default 512 // N, >= 1)")
    parser.add_argument("--style", choices=("mask", "weights"), default="mask", help="black mask or log weights")
    parser.add_argument("--out", required=True, help="output file; its suffix picks the format (.png, .svg, .pdf, ...)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="exact-pixel PNG (each pair --scale pixels square, no axes); the fallback without matplotlib",
    )
    parser.set_defaults(func=_run)
