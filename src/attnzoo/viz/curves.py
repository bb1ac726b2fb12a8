"""``attnzoo curves``: learning curves of finished or running training runs, from their ``metrics.jsonl``.

    attnzoo curves runs/listops-nystrom=nystrom runs/listops-none=none --out curves.png \\
        --published nystrom=37.15 --published none=...

Each run directory is one line (dev accuracy against the optimiser step by default); ``--published``
draws a published number as a dotted line in the colour of the run with that label.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["read_curve", "register_commands"]


def read_curve(
    run_dir: str | Path, *, split: str = "dev", metric: str = "accuracy", x: str = "step"
) -> list[tuple[float, float]]:
    """``[(x, metric), ...]`` of the ``split`` records of ``run_dir/metrics.jsonl``, in step order.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.jsonl``.
        ValueError: no record of ``split`` carries ``metric`` and ``x`` (the names found are listed).
    """
    from attnzoo.train.log import read_records

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a training run directory)")
    records = [r for r in read_records(path) if r.get("split") == split]
    points = sorted((float(r[x]), float(r[metric])) for r in records if x in r and metric in r)
    if not points:
        found = sorted({key for r in records for key in r}) or ["(no records)"]
        raise ValueError(
            f"{path}: no {split!r} record with {x!r} and {metric!r}; {split} records have: {', '.join(found)}"
        )
    return points


def _labelled(spec: str) -> tuple[str, str]:
    """``"DIR=LABEL"`` -> ``(DIR, LABEL)``; a bare ``DIR`` is labelled by its name."""
    path, _, label = spec.partition("=")
    return path, label or Path(path).name


def _published(spec: str) -> tuple[str, float]:
    """``"LABEL=VALUE"`` -> ``(LABEL, VALUE)`` for ``--published``."""
    label, _, value = spec.partition("=")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--published takes LABEL=VALUE with a number, got {spec!r}") from None
    if not label:
        raise argparse.ArgumentTypeError(f"--published takes LABEL=VALUE, got {spec!r}")
    return label, number


def _run(args: argparse.Namespace) -> int:
    from attnzoo.viz.plots import plot_curves

    curves = {
        label: read_curve(path, split=args.split, metric=args.metric, x=args.x)
        for path, label in map(_labelled, args.runs)
    }
    scale = 100.0 if args.percent else 1.0
    curves = {label: [(step, value * scale) for step, value in points] for label, points in curves.items()}
    ylabel = f"{args.split} {args.metric}" + (" (%)" if args.percent else "")
    xlabel = {"step": "optimiser step", "train_time_s": "training time (s)"}.get(args.x, args.x)
    plot_curves(
        curves,
        args.out,
        xlabel=xlabel,
        ylabel=ylabel,
        title=args.title,
        chance=args.chance,
        references=dict(args.published),
    )
    print(f"wrote {args.out}")
    return 0


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attnzoo curves`` to the CLI."""
    parser = subparsers.add_parser("curves", help="plot learning curves of training runs (metrics.jsonl)")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[=LABEL]", help="training run directories")
    parser.add_argument("--out", required=True, help="output image (.png, .svg or .pdf)")
    parser.add_argument(
        "--split", default="dev", choices=("train", "dev", "test"), help="records to plot (default: dev)"
    )
    parser.add_argument("--metric", default="accuracy", help="record field on the y axis (default: accuracy)")
    parser.add_argument("--x", default="step", choices=("step", "train_time_s"), help="x axis (default: step)")
    parser.add_argument("--percent", action="store_true", help="multiply the metric by 100 (accuracy in %%)")
    parser.add_argument(
        "--published",
        action="append",
        default=[],
        type=_published,
        metavar="LABEL=VALUE",
        help="a published value drawn as a dotted line (repeatable)",
    )
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--chance", type=float, default=None, metavar="VALUE", help="a dashed line at the majority-class value"
    )
    parser.set_defaults(func=_run)
