"""AdamW and the learning-rate schedules the seeds use.

- ``rsqrt``: LRA's ``linear_warmup * rsqrt_decay``, normalised so the peak equals ``lr``:
  ``lr * min(1, s/w) * sqrt(w / max(s, w))`` (LRA ListOps: 0.05/sqrt(1000) = 1.58e-3 peak).
- ``cosine``: linear warm-up, then cosine decay to 0 at ``steps``.
- ``linear``: linear warm-up, then linear decay to 0.
- ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR(max_lr=lr, pct_start=warmup/steps,
  anneal_strategy="linear")``, as Nystromformer-LRA's ``run_tasks.py`` (spec §5.4; cycles beta1 too).
- ``constant``: linear warm-up, then ``lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms and 1-D parameters are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) for the closed-form schedules."""
    s = step + 1  # the rate used for the (step+1)-th update
    warm = min(1.0, s / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule == "rsqrt":
        return warm * math.sqrt(warmup / max(s, warmup))
    progress = min(1.0, max(0.0, (s - warmup) / max(1, total - warmup)))
    if schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return warm * (1.0 - progress)
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, *, done_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``cfg.schedule`` stepped once per optimiser step.

    ``done_steps > 0`` builds it as if ``done_steps`` optimiser steps were already taken (the
    rate is set for the next one); the param groups must then hold the scheduler's entries
    (``initial_lr``, and for onecycle ``max_lr``/``min_lr``/momenta) from a fresh build.
    """
    last_epoch = done_steps - 1
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=cfg.steps,
            pct_start=cfg.warmup_steps / cfg.steps,
            anneal_strategy="linear",
            last_epoch=last_epoch,
        )
    schedule, warmup, total = cfg.schedule, cfg.warmup_steps, cfg.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, warmup, total), last_epoch=last_epoch
    )
