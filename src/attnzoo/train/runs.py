"""Several seeds of one run: train each, then report mean and standard deviation."""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path
from typing import Any

from attnzoo.io import atomic_write_json
from attnzoo.train.config import TrainConfig
from attnzoo.train.loop import train

__all__ = ["summarize", "train_seeds"]

SUMMARY_KEYS = (
    "accuracy",
    "loss",
    "dev_accuracy",
    "exact_match",  # encoder-decoder tasks: greedy decoding, whole sequences right
    "token_accuracy",  # ... and target tokens right
    "steps_per_s",
    "tokens_per_s",
    "peak_memory_mb",
    "train_time_s",
)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one run) of each number in ``SUMMARY_KEYS``."""
    summary: dict[str, Any] = {
        "task": results[0]["task"],
        "attention": results[0]["attention"],
        "seeds": [r["seed"] for r in results],
        "parameters": results[0]["parameters"],
    }
    for key in SUMMARY_KEYS:
        values = [float(r[key]) for r in results if r.get(key) is not None]
        if values:
            summary[f"{key}_mean"] = statistics.fmean(values)
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def train_seeds(cfg: TrainConfig, num_seeds: int) -> dict[str, Any]:
    """Train seeds ``cfg.seed .. cfg.seed + num_seeds - 1`` one after another; returns the summary.

    The summary (with every run's results under ``runs``) is written next to the run folders as
    ``summary.json`` in ``out_dir`` formatted with ``seed="all"``.

    Raises:
        ValueError: ``num_seeds < 1``, or ``out_dir`` lacks ``{seed}`` so runs would overwrite each other.
    """
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if num_seeds > 1 and "{seed}" not in cfg.out_dir:
        raise ValueError(f"--seeds {num_seeds} needs '{{seed}}' in out_dir (got {cfg.out_dir!r})")
    results = [train(dataclasses.replace(cfg, seed=cfg.seed + i)) for i in range(num_seeds)]
    summary = {**summarize(results), "runs": results}
    where = Path(cfg.out_dir.format(task=cfg.task, attention=cfg.model.attention, seed="all"))
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 writes under torchrun
        atomic_write_json(where / "summary.json", summary)
    return summary
