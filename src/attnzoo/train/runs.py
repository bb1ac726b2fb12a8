"""Several seeds of one run: train each, then report mean and standard deviation."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from attnzoo.io import atomic_write_json
from attnzoo.train.config import TrainConfig
from attnzoo.train.distributed import pick_device
from attnzoo.train.loop import train

__all__ = ["seed_workers", "summarize", "train_seeds"]

SUMMARY_KEYS = (
    "accuracy",
    "loss",
    "dev_accuracy",
    "exact_match",  # encoder-decoder tasks: greedy decoding, whole sequences right
    "token_accuracy",  # ... and target tokens right
    "steps_per_s",
    "tokens_per_s",
    "images_per_s",  # image tasks
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


def seed_workers(cfg: TrainConfig, num_seeds: int, requested: int | str = "auto") -> int:
    """How many seeds :func:`train_seeds` trains at once: ``requested`` (a count >= 1), or for ``"auto"``: on a CPU
    with several cores and outside ``torchrun``, one process per seed up to the cores (a small model uses one core
    better than two: the kv-lookup leaderboard trains about 1.3x faster so), else 1.

    Raises:
        ValueError: a count below 1 or a word other than ``auto``.
    """
    if requested != "auto":
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise ValueError(f"seed workers must be 'auto' or a whole number >= 1, got {requested!r}")
        return min(requested, num_seeds)
    if num_seeds < 2 or "WORLD_SIZE" in os.environ or pick_device(cfg.device).type != "cpu":
        return 1
    return max(1, min(num_seeds, torch.get_num_threads(), os.cpu_count() or 1))


def train_seeds(cfg: TrainConfig, num_seeds: int, *, workers: int | str = 1) -> dict[str, Any]:
    """Train seeds ``cfg.seed .. cfg.seed + num_seeds - 1``; returns the summary.

    ``workers`` (see :func:`seed_workers`) > 1 trains that many seeds at once in fresh processes, each with an
    equal share of torch's threads (its numbers then differ from a run with all threads in the last digits of
    the loss). Those processes re-import the caller's main module: call it from a script only under
    ``if __name__ == "__main__":`` (the ``attnzoo`` command does).

    The summary (with every run's results under ``runs``) is written next to the run folders as
    ``summary.json`` in ``out_dir`` formatted with ``seed="all"``.

    Raises:
        ValueError: ``num_seeds < 1``, or ``out_dir`` lacks ``{seed}`` so runs would overwrite each other.
    """
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    if num_seeds > 1 and "{seed}" not in cfg.out_dir:
        raise ValueError(f"--seeds {num_seeds} needs '{{seed}}' in out_dir (got {cfg.out_dir!r})")
    configs = [dataclasses.replace(cfg, seed=cfg.seed + i) for i in range(num_seeds)]
    workers = seed_workers(cfg, num_seeds, workers)
    if workers == 1:
        results = [train(c) for c in configs]
    else:
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            results = list(pool.map(train, configs))
    summary = {**summarize(results), "runs": results}
    where = Path(cfg.out_dir.format(task=cfg.task, attention=cfg.model.attention, seed="all"))
    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 writes under torchrun
        atomic_write_json(where / "summary.json", summary)
    return summary
