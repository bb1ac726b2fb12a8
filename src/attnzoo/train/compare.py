"""The leaderboard job: train several mechanisms on one task under one budget; table, CSV and plot.

``compare(task="listops-mini", mechanisms=("softmax", "local", "dilated", "none"))`` trains each
with the same config (steps, optional wall-clock budget, seed) and writes ``<out>/compare.md``
(accuracy, steps/s, peak memory, parameters), ``compare.csv`` and ``compare.png`` (dev accuracy
against training time). Runs resume (``resume=auto``), so re-running a finished job only re-tests.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import attnzoo
from attnzoo.io import atomic_write_text
from attnzoo.train.config import load_config
from attnzoo.train.log import read_records
from attnzoo.train.runs import train_seeds

__all__ = ["DEFAULT_MECHANISMS", "DEFAULT_TASK", "compare", "default_mechanisms", "majority_accuracy"]

DEFAULT_TASK = "listops-mini"
DEFAULT_MECHANISMS = ("softmax", "local", "dilated", "none")
COLUMNS = (
    "mechanism",
    "steps",
    "accuracy",
    "accuracy_std",
    "dev_accuracy",
    "steps_per_s",
    "train_time_s",
    "peak_memory_mb",
    "parameters",
)


def default_mechanisms() -> list[str]:
    """``DEFAULT_MECHANISMS`` that are registered in this installation."""
    known = {spec.name for spec in attnzoo.available()}
    return [name for name in DEFAULT_MECHANISMS if name in known]


def majority_accuracy(cfg: Any) -> float | None:
    """Accuracy of always predicting the most frequent test label (classification tasks), else ``None``."""
    from attnzoo import tasks

    spec = tasks.get(cfg.task, **cfg.task_options)
    if spec.target != "class":
        return None
    dataset = tasks.load_split(
        cfg.task,
        "test",
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        size=cfg.test_size,
        seed=cfg.data_seed,
        **cfg.task_options,
    )
    counts = Counter(int(dataset[i]["label"]) for i in range(len(dataset)))
    return max(counts.values()) / max(len(dataset), 1)


def _markdown(rows: list[dict[str, Any]], title: str) -> str:
    head = "| mechanism | test accuracy (%) | best dev accuracy (%) | steps | steps/s | train time (s) | peak mem (MB)"
    lines = [f"### {title}", "", head + " | parameters |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * r['accuracy_std']:.1f}" if r["accuracy_std"] else "")
        lines.append(
            f"| {r['mechanism']} | {acc} | {100 * (r['dev_accuracy'] or 0):.1f} | {r['steps']} "
            f"| {r['steps_per_s']:.2f} | {r['train_time_s']:.0f} | {r['peak_memory_mb']:.0f} | {r['parameters']:,} |"
        )
    return "\n".join(lines) + "\n"


def compare(
    task: str = DEFAULT_TASK,
    mechanisms: list[str] | None = None,
    *,
    out_dir: str | Path = "runs/compare",
    overrides: dict[str, Any] | None = None,
    attention_options: dict[str, dict[str, Any]] | None = None,
    config: str | Path | None = None,
    preset: str | None = None,
    seeds: int = 1,
    plot: bool = True,
) -> list[dict[str, Any]]:
    """Train every mechanism in ``mechanisms`` on ``task`` with the same config; write the reports.

    Args:
        task: task name; its config is ``config`` or the task's default file under ``configs/``.
        mechanisms: registered names (default: :func:`default_mechanisms`).
        out_dir: folder for the runs and the reports.
        overrides: config fields for every run (``{"steps": 300}``).
        attention_options: per mechanism options (``{"local": {"window_size": 16}}``).
        seeds: runs per mechanism; accuracy is then a mean with its standard deviation.
        plot: also draw ``compare.png`` (skipped with a message when matplotlib is missing).

    Returns:
        One row per mechanism (the ``COLUMNS`` fields).
    """
    names = list(mechanisms) if mechanisms else default_mechanisms()
    if not names:
        raise ValueError("no mechanisms to compare")
    known = {spec.name for spec in attnzoo.available()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
    out = Path(out_dir)
    rows, curves = [], {}
    cfg = None
    for name in names:
        run_overrides = {
            **(overrides or {}),
            "model.attention": name,
            "resume": "auto",
            "model.attention_options": (attention_options or {}).get(name, {}),
            "out_dir": str(out / f"{name}-s{{seed}}"),
        }
        cfg = load_config(config, run_overrides, task=task, preset=preset)
        summary = train_seeds(cfg, seeds)
        run = summary["runs"][0]
        rows.append(
            {
                "mechanism": name,
                "steps": run["steps"],
                "accuracy": summary["accuracy_mean"],
                "accuracy_std": summary["accuracy_std"],
                "dev_accuracy": summary.get("dev_accuracy_mean"),
                "steps_per_s": summary["steps_per_s_mean"],
                "train_time_s": summary["train_time_s_mean"],
                "peak_memory_mb": summary["peak_memory_mb_mean"],
                "parameters": run["parameters"],
            }
        )
        records = read_records(out / f"{name}-s{cfg.seed}" / "metrics.jsonl")
        curves[name] = [(r["train_time_s"], r["accuracy"]) for r in records if r.get("split") == "dev"]
    assert cfg is not None
    chance = majority_accuracy(cfg)
    title = f"{task}: {cfg.steps} steps x batch {cfg.batch_size}, {seeds} seed(s)"
    if chance is not None:
        title += f"; majority class {100 * chance:.1f}%"
    atomic_write_text(out / "compare.md", _markdown(rows, title))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "compare.csv", buffer.getvalue())
    if plot:
        from attnzoo.viz.plots import plot_accuracy_vs_time

        try:
            plot_accuracy_vs_time(curves, out / "compare.png", title=task, chance=chance)
        except ImportError as err:
            print(f"attnzoo compare: no plot: {err}")
    return rows
