"""AdamW and the learning-rate schedules the seeds use.

- ``rsqrt``: LRA's ``linear_warmup * rsqrt_decay``, normalised so the peak equals ``lr``:
  ``lr * min(1, s/w) * sqrt(w / max(s, w))`` (LRA ListOps: 0.05/sqrt(1000) = 1.58e-3 peak).
- ``cosine``: linear warm-up, then cosine decay to 0 at ``steps``.
- ``linear``: linear warm-up, then linear decay to 0.
- ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR(max_lr=lr, pct_start=warmup/steps,
  anneal_strategy="linear")``, as Nystromformer-LRA's ``run_tasks.py`` (spec §5.4; cycles beta1 too).
- ``constant``: linear warm-up, then ``lr``.

Optimisers (``TrainConfig.optimizer``): ``adamw`` -- AdamW with weight decay on matrices only;
``nystromformer-lra`` -- ``run_tasks.py``'s AdamW (one group, decay on every parameter, betas
(0.9, 0.999), eps 1e-6). :func:`optimizer_for` builds ``run_tasks.py``'s optimiser and schedule from an
official training config; the ``nystromformer`` preset goes through the same two functions
(:func:`run_tasks_adamw`, :func:`run_tasks_one_cycle`) via :func:`run_tasks_training`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "RUN_TASKS_BETAS",
    "RUN_TASKS_EPS",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "no_weight_decay_names",
    "optimizer_for",
    "run_tasks_adamw",
    "run_tasks_one_cycle",
    "run_tasks_training",
]

RUN_TASKS_BETAS = (0.9, 0.999)  # fixed in run_tasks.py
RUN_TASKS_EPS = 1e-6
# the keys of an official training config (lra_config.py "training") that the optimiser and schedule read
_RUN_TASKS_KEYS = ("learning_rate", "weight_decay", "warmup", "num_train_steps", "lr_decay")


def _checked(training_config: Mapping[str, Any]) -> Mapping[str, Any]:
    missing = [key for key in _RUN_TASKS_KEYS if key not in training_config]
    if missing:
        raise ValueError(f"training config is missing {', '.join(missing)} (read by run_tasks.py's optimiser)")
    return training_config


def run_tasks_adamw(params: Iterable[nn.Parameter], training_config: Mapping[str, Any]) -> torch.optim.AdamW:
    """``run_tasks.py``'s AdamW over ``params`` (one group): the config's lr and weight decay, fixed betas and eps.

    Betas (0.9, 0.999) and eps 1e-6 (:data:`RUN_TASKS_BETAS`, :data:`RUN_TASKS_EPS`).
    """
    tc = _checked(training_config)
    return torch.optim.AdamW(
        params, lr=tc["learning_rate"], betas=RUN_TASKS_BETAS, eps=RUN_TASKS_EPS, weight_decay=tc["weight_decay"]
    )


def run_tasks_one_cycle(
    optimizer: torch.optim.Optimizer, training_config: Mapping[str, Any], *, done_steps: int = 0
) -> torch.optim.lr_scheduler.OneCycleLR:
    """``run_tasks.py``'s ``OneCycleLR`` on ``optimizer``, from an official training config.

    Peak ``learning_rate``, ``pct_start = warmup / num_train_steps``, ``anneal_strategy = lr_decay``
    (``"linear"`` or ``"cos"``), ``num_train_steps`` steps; PyTorch's other defaults (start at lr/25, end
    at lr/25e4, beta1 cycled 0.95 -> 0.85 -> 0.95).

    ``done_steps > 0``: as if that many steps were taken (the param groups must hold the scheduler's
    entries from a fresh build, as after loading an optimiser state).
    """
    from attnzoo.train.config import check_one_cycle  # config imports this module

    tc = _checked(training_config)
    check_one_cycle(tc["warmup"], tc["num_train_steps"], warmup_name="warmup", steps_name="num_train_steps")
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=tc["learning_rate"],
        pct_start=tc["warmup"] / tc["num_train_steps"],
        anneal_strategy=tc["lr_decay"],
        total_steps=tc["num_train_steps"],
        last_epoch=done_steps - 1,
    )


def optimizer_for(
    model: nn.Module, training_config: Mapping[str, Any]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """The optimiser and schedule mlpen/Nystromformer's ``run_tasks.py`` builds for ``model``.

    Args:
        model: e.g. ``attnzoo.from_official_model("nystromformer-lra", ...)``; every parameter is optimised
            (``model.parameters()``, one group, as the official).
        training_config: an official training config (``lra_config.config[task]["training"]``); reads
            ``learning_rate``, ``weight_decay``, ``warmup``, ``num_train_steps`` and ``lr_decay``.

    Returns:
        ``(AdamW, OneCycleLR)``; call ``optimizer.step()`` then ``scheduler.step()`` once per training step.

    Raises:
        ValueError: a missing training key (named), or a ``warmup`` that leaves a phase of the cycle empty.
    """
    optimizer = run_tasks_adamw(model.parameters(), training_config)
    return optimizer, run_tasks_one_cycle(optimizer, training_config)


def run_tasks_training(cfg: Any) -> dict[str, Any]:
    """A ``TrainConfig`` as the official training config the ``run_tasks.py`` functions read (linear anneal)."""
    return {
        "learning_rate": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup": cfg.warmup_steps,
        "num_train_steps": cfg.steps,
        "lr_decay": "linear",
    }


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """The optimiser ``cfg.optimizer`` names for ``model``.

    ``adamw``: weight decay on matrices only (biases, norms and 1-D parameters are not decayed, nor the
    parameters a submodule lists in its ``no_weight_decay()``, timm's convention: the ViT's ``pos_embed``),
    ``cfg``'s betas and eps. ``nystromformer-lra``: :func:`run_tasks_adamw` over every parameter.
    """
    if cfg.optimizer == "nystromformer-lra":
        return run_tasks_adamw(model.parameters(), run_tasks_training(cfg))
    skip = no_weight_decay_names(model)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in params if p.dim() >= 2 and name not in skip]
    no_decay = [p for name, p in params if p.dim() < 2 or name in skip]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that submodules of ``model`` list in their ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


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
    if cfg.schedule == "onecycle":
        return run_tasks_one_cycle(optimizer, run_tasks_training(cfg), done_steps=done_steps)
    schedule, warmup, total = cfg.schedule, cfg.warmup_steps, cfg.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, warmup, total), last_epoch=done_steps - 1
    )
