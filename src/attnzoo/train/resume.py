"""Resuming a run: the training state a checkpoint holds, and which settings may change on resume.

A resumed run must continue the interrupted one exactly. The model config is compared with the one
the checkpoint's run *requested* and the model is rebuilt as that run *built* it (they differ after
``--init-from``, which adapts length-tied attention options); a different model is always refused.
The settings in :data:`TRAJECTORY_FIELDS` (task, data, seed, batch, optimiser, schedule, precision)
and the number of processes are refused too, unless ``resume_with_new_settings`` is set: then the
new values really apply (the optimiser's hyper-parameters are replaced and the schedule is rebuilt
for the new settings at the checkpoint's step; moments and the data position carry over).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from attnzoo.models import ModelConfig
from attnzoo.train.config import TrainConfig

__all__ = ["TRAJECTORY_FIELDS", "TrainState", "check_resume", "differences", "load_optimizer"]

TRAJECTORY_FIELDS = (
    "task",
    "sequence_parallel",
    "task_options",
    "train_size",
    "dev_size",
    "test_size",
    "data_seed",
    "seed",
    "batch_size",
    "accumulate",
    "steps",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "optimizer",
    "schedule",
    "warmup_steps",
    "grad_clip",
    "precision",
)


@dataclasses.dataclass
class TrainState:
    """Where training stands: optimiser ``step``, best dev score and its step, and the training clock.

    ``train_time`` counts seconds spent in training steps only: the clock is stopped
    (:meth:`clock_out`) before evaluations and checkpoints and restarted (:meth:`clock_in`) after.
    """

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    train_time: float = 0.0
    mark: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

    @classmethod
    def from_checkpoint(cls, saved: Mapping[str, Any]) -> TrainState:
        """The state stored by :meth:`to_checkpoint`."""
        return cls(int(saved["step"]), float(saved["best"]), int(saved["best_step"]), float(saved["train_time"]))

    def to_checkpoint(self) -> dict[str, Any]:
        """``step``, ``best``, ``best_step`` and ``train_time`` as plain values."""
        return {"step": self.step, "best": self.best, "best_step": self.best_step, "train_time": self.train_time}

    def clock_in(self) -> None:
        """Restart the training clock (after an evaluation or checkpoint)."""
        self.mark = time.perf_counter()

    def clock_out(self) -> float:
        """Add the time since the last mark to ``train_time``; returns it."""
        now = time.perf_counter()
        self.train_time += now - self.mark
        self.mark = now
        return self.train_time

    def elapsed(self) -> float:
        """``train_time`` including the running interval, without stopping the clock."""
        return self.train_time + time.perf_counter() - self.mark


def differences(saved: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str], prefix: str = "") -> list[str]:
    """``["lr (checkpoint 0.001, now 0.0005)", ...]`` for each key whose value differs."""
    return [
        f"{prefix}{key} (checkpoint {saved.get(key)!r}, now {now.get(key)!r})"
        for key in keys
        if saved.get(key) != now.get(key)
    ]


def check_resume(saved: Mapping[str, Any], cfg: TrainConfig, world_size: int, path: Path) -> tuple[TrainConfig, bool]:
    """Check that ``cfg`` may continue the checkpoint ``saved``; returns ``(cfg to run, settings changed)``.

    The returned config carries the checkpoint's built model config.

    Raises:
        ValueError: the model differs; ``steps`` is below the checkpoint's step; or trajectory settings
            (or the number of processes) differ without ``resume_with_new_settings``. Names every field.
    """
    config, meta = saved["config"], saved["meta"]
    # a model field added after the checkpoint was written compares as its default (what that run built)
    requested = {**ModelConfig().to_dict(), **meta.get("requested_model", config["model"])}
    now_model = cfg.model.to_dict()
    model_changes = differences(requested, now_model, sorted(set(requested) | set(now_model)), "model.")
    if model_changes:
        raise ValueError(
            f"cannot resume {path}: the model differs: {'; '.join(model_changes)}. "
            f"Start a new run (another --out-dir), or --init-from {path} to start from its weights"
        )
    if cfg.steps < int(saved["step"]):
        raise ValueError(f"cannot resume {path}: steps ({cfg.steps}) is below the checkpoint's step ({saved['step']})")
    # a setting added after the checkpoint was written compares as its default (what that run used)
    changes = differences({**TrainConfig().to_dict(), **config}, cfg.to_dict(), TRAJECTORY_FIELDS)
    saved_world = saved.get("world_size", world_size)  # checkpoints before per-rank RNG states lack it
    changes += differences({"world_size": saved_world}, {"world_size": world_size}, ["world_size"])
    if changes and not cfg.resume_with_new_settings:
        raise ValueError(
            f"cannot resume {path}: these settings differ from the checkpoint's: {'; '.join(changes)}. "
            "Pass the original values, or --resume-with-new-settings to continue with the new ones"
        )
    return dataclasses.replace(cfg, model=ModelConfig(**config["model"])), bool(changes)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], *, keep_settings: bool) -> None:
    """Load the optimiser state; with ``keep_settings`` the hyper-parameters stay the current (new) ones.

    Moments and step counts always come from the checkpoint; ``keep_settings`` keeps every
    param-group entry (lr, betas, eps, weight decay and what the scheduler stored there).
    """
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved["optimizer"])
    if keep_settings:
        for group, kept in zip(optimizer.param_groups, settings, strict=True):
            group.update(kept)
