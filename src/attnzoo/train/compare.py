"""The leaderboard job: train several mechanisms on one task under one budget; table, CSV and plot.

``compare()`` with no arguments trains the default set of mechanisms on ``kv-lookup`` (queries at
the end of 128 tokens recall values stored anywhere before them, so a mechanism that cannot route
information that far stays near chance while exact softmax solves it; see docs/training.md for the
measured justification), each for the same number of steps and for several seeds, and writes
``<out>/compare.md`` (mean and std of accuracy per mechanism, the options used, steps/s, peak
memory, parameters, and the trivial-predictor baseline), ``compare.csv`` and ``compare.png``.
Options that depend on the sequence length (windows, segments, landmarks, projections) are set per
mechanism for each task in ``TASK_OPTIONS`` and can be overridden. Runs resume (``resume=auto``),
so re-running a finished job only rebuilds the reports.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import attnzoo
from attnzoo.checkpoints import load_run_split
from attnzoo.io import atomic_write_text
from attnzoo.train.config import load_config
from attnzoo.train.log import read_records
from attnzoo.train.runs import train_seeds

__all__ = [
    "DEFAULT_MECHANISMS",
    "DEFAULT_SEEDS",
    "DEFAULT_TASK",
    "TASK_OPTIONS",
    "compare",
    "default_mechanisms",
    "majority_accuracy",
    "task_options_for",
]

DEFAULT_TASK = "kv-lookup"
DEFAULT_SEEDS = 2
# The default leaderboard: exact, sparse, kernel, low-rank and no-attention (those registered here).
DEFAULT_MECHANISMS = ("softmax", "local", "dilated", "performer", "linear", "nystrom", "linformer", "none")

# Length-dependent options per task and mechanism (kv-lookup: N = 128, queries in the last 8 positions).
# The local window (16 each side, two layers) reaches a stored pair in about 1 example in 4, by design: a
# window that covers the whole example would make local equal softmax and the row would show nothing.
TASK_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "kv-lookup": {
        "local": {"window_size": 16},
        "dilated": {"segment_lengths": (16, 64, 128), "dilation_rates": (1, 4, 8)},
        "nystrom": {"num_landmarks": 16},
        "linformer": {"proj_dim": 32, "max_length": 128},
        "performer": {"num_features": 64},
    },
}
COLUMNS = (
    "mechanism",
    "options",
    "seeds",
    "steps",
    "accuracy",
    "accuracy_std",
    "dev_accuracy",
    "steps_per_s",
    "train_time_s",
    "peak_memory_mb",
    "parameters",
)


def runnable(name: str, causal: bool) -> bool:
    """Whether mechanism ``name`` can run a task that needs ``causal`` attention (or bidirectional)."""
    caps = attnzoo.get_spec(name).capabilities
    return caps.causal if causal else caps.bidirectional


def default_mechanisms() -> list[str]:
    """``DEFAULT_MECHANISMS`` that are registered in this installation."""
    known = {spec.name for spec in attnzoo.available()}
    return [name for name in DEFAULT_MECHANISMS if name in known]


def task_options_for(task: str, name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options mechanism ``name`` runs with on ``task``: ``TASK_OPTIONS`` overridden by ``given``.

    Keys the mechanism does not have are dropped from the task defaults (a mechanism registered
    later may name an option differently) but are an error in ``given``.
    """
    fields = {f.name for f in dataclasses.fields(attnzoo.options(name))}
    defaults = {k: v for k, v in TASK_OPTIONS.get(task, {}).get(name, {}).items() if k in fields}
    return {**defaults, **(given or {})}


def majority_accuracy(cfg: Any) -> float | None:
    """Accuracy of always predicting the most frequent test label, else ``None`` (regression).

    For per-token ("sequence") targets the labels counted are the scored positions (label != -100).
    """
    from attnzoo import tasks

    if tasks.get(cfg.task, **cfg.task_options).target not in ("class", "sequence"):
        return None
    dataset = load_run_split(cfg.to_dict(), "test")
    counts: Counter[int] = Counter()
    for i in range(len(dataset)):
        labels = np.asarray(dataset[i]["label"]).reshape(-1)
        counts.update(int(label) for label in labels[labels != -100])
    return max(counts.values()) / max(sum(counts.values()), 1) if counts else None


def _format_options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in options.items()) or "-"


def _markdown(rows: list[dict[str, Any]], title: str, chance: float | None) -> str:
    lines = [
        f"### {title}",
        "",
        "| mechanism | options | test accuracy (%) mean ± std | best dev accuracy (%) | steps | steps/s "
        "| peak mem (MB) | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mechanism']} | {r['options']} | {100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} "
            f"| {100 * (r['dev_accuracy'] or 0):.1f} | {r['steps']} | {r['steps_per_s']:.2f} "
            f"| {r['peak_memory_mb']:.0f} | {r['parameters']:,} |"
        )
    if chance is not None:
        lines.append(f"| majority class (trivial predictor) | - | {100 * chance:.1f} | - | - | - | - | 0 |")
    return "\n".join(lines) + "\n"


def _row(name: str, options: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    runs = summary["runs"]
    return {
        "mechanism": name,
        "options": _format_options(options),
        "seeds": len(runs),
        "steps": runs[0]["steps"],
        "accuracy": summary["accuracy_mean"],
        "accuracy_std": summary["accuracy_std"],
        "dev_accuracy": summary.get("dev_accuracy_mean"),
        "steps_per_s": summary["steps_per_s_mean"],
        "train_time_s": summary["train_time_s_mean"],
        "peak_memory_mb": statistics.fmean(r["peak_memory_mb"] for r in runs),
        "parameters": runs[0]["parameters"],
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def compare(
    task: str = DEFAULT_TASK,
    mechanisms: list[str] | None = None,
    *,
    out_dir: str | Path = "runs/compare",
    overrides: dict[str, Any] | None = None,
    attention_options: dict[str, dict[str, Any]] | None = None,
    config: str | Path | None = None,
    preset: str | None = None,
    seeds: int = DEFAULT_SEEDS,
    plot: bool = True,
    workers: int | str = 1,
) -> list[dict[str, Any]]:
    """Train every mechanism in ``mechanisms`` on ``task`` with the same config; write the reports.

    Args:
        task: task name; its config is ``config`` or the task's default file under ``configs/``.
        mechanisms: registered names; ``None`` = :func:`default_mechanisms`, ``["all"]`` = every
            registered mechanism that can run the task (causal or bidirectional, as it needs).
        out_dir: folder for the runs and the reports.
        overrides: config fields for every run (``{"steps": 300}``).
        attention_options: per mechanism options (``{"local": {"window_size": 16}}``), on top of
            ``TASK_OPTIONS`` for the task.
        seeds: runs per mechanism (seeds 0 .. seeds-1 of the model; the data is the same); the table
            shows the mean and the sample standard deviation.
        plot: also draw ``compare.png`` (skipped with a message when matplotlib is missing).
        workers: seeds trained at once, or ``"auto"`` (:func:`attnzoo.train.runs.seed_workers`; the
            ``attnzoo compare`` command's default).

    Returns:
        One row per mechanism (the ``COLUMNS`` fields).

    Raises:
        ValueError: an unknown mechanism, one that cannot run the task, or ``seeds < 1``.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    base = load_config(config, dict(overrides or {}), task=task, preset=preset)
    causal = base.model.causal
    known = {spec.name for spec in attnzoo.available()}
    if mechanisms == ["all"]:
        names = [name for name in sorted(known) if runnable(name, causal)]
    else:
        names = list(mechanisms) if mechanisms else default_mechanisms()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
    unable = [n for n in names if not runnable(n, causal)]
    if unable:
        kind = "causal" if causal else "bidirectional"
        raise ValueError(f"{', '.join(unable)} cannot run {task} ({kind} attention)")
    if not names:
        raise ValueError("no mechanisms to compare")
    out = Path(out_dir)
    rows, curves = [], {}
    cfg = base
    print(f"attnzoo compare: {task}, {len(names)} mechanisms x {seeds} seed(s), {base.steps} steps each -> {out}")
    for index, name in enumerate(names, start=1):
        options = task_options_for(task, name, (attention_options or {}).get(name))
        run_overrides = {
            **(overrides or {}),
            "model.attention": name,
            "resume": "auto",
            "model.attention_options": options,
            "out_dir": str(out / f"{name}-s{{seed}}"),
        }
        cfg = load_config(config, run_overrides, task=task, preset=preset)
        print(f"[{index}/{len(names)}] {name} ({_format_options(options)})", flush=True)
        summary = train_seeds(cfg, seeds, workers=workers)
        rows.append(_row(name, options, summary))
        last = rows[-1]
        print(
            f"[{index}/{len(names)}] {name}: accuracy {100 * last['accuracy']:.1f} ± {100 * last['accuracy_std']:.1f}"
            f" %, {last['steps_per_s']:.1f} steps/s",
            flush=True,
        )
        records = read_records(out / f"{name}-s{cfg.seed}" / "metrics.jsonl")
        curves[name] = [(r["train_time_s"], r["accuracy"]) for r in records if r.get("split") == "dev"]
    chance = majority_accuracy(cfg)
    title = f"{task}: {cfg.steps} steps x batch {cfg.batch_size}, {seeds} seed(s) per mechanism"
    atomic_write_text(out / "compare.md", _markdown(rows, title, chance))
    _write_csv(out / "compare.csv", rows)
    if plot:
        from attnzoo.viz.plots import plot_curves

        try:
            plot_curves(curves, out / "compare.png", xlabel="training time (s)", title=task, chance=chance)
        except ImportError as err:
            print(f"attnzoo compare: no plot: {err}")
    return rows
