"""A training run's objects: started fresh, from ``--init-from`` weights, or resumed from a checkpoint.

:func:`start_run` returns a :class:`Run` (model, optimiser, schedule, grad scaler, data stream,
:class:`~attnzoo.train.resume.TrainState`) ready for the loop; :func:`save_run` writes it to a
checkpoint. :func:`wrap_model` is the one place where the model is wrapped for parallel training.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

import attnzoo
from attnzoo.checkpoints import load_checkpoint, save_checkpoint
from attnzoo.models import ModelConfig, TaskModel, build_model
from attnzoo.train import checkpoint as ckpt
from attnzoo.train.config import TrainConfig
from attnzoo.train.data import TrainStream, load_splits
from attnzoo.train.distributed import DistInfo
from attnzoo.train.optim import build_optimizer, build_scheduler
from attnzoo.train.resume import TrainState, check_resume, load_optimizer
from attnzoo.train.sequence_parallel import attach, data_view, make_groups

__all__ = ["Run", "prepare_model", "save_run", "start_run", "wrap_model"]


@dataclasses.dataclass
class Run:
    """Everything one training process holds; ``cfg.model`` is the model config actually built."""

    cfg: TrainConfig
    info: DistInfo
    data: DistInfo  # where this process reads data: info, or its data-parallel group under --sequence-parallel
    spec: Any  # the task's TaskSpec
    raw_model: TaskModel
    model: nn.Module  # raw_model as trained (wrapped for data parallelism)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    splits: dict[str, Dataset]
    stream: TrainStream
    state: TrainState
    meta: dict[str, Any]  # length, grid, version, task spec, requested model config
    resumed_from: Path | None
    resized: list[str]  # tensors resized from an --init-from checkpoint

    @property
    def micro_batch(self) -> int:
        """Examples per forward pass on this process."""
        return self.cfg.batch_size // (self.data.world_size * self.cfg.accumulate)


def prepare_model(cfg: TrainConfig, spec: Any, init: dict[str, Any] | None) -> tuple[TaskModel, ModelConfig, list[str]]:
    """Build the model (seeded with ``cfg.seed``); with ``init`` (a checkpoint) adapt options and load its weights.

    Returns:
        ``(model, model config built, tensors resized from init)``.
    """
    model_cfg = cfg.model
    if init is not None and init["config"]["model"]["attention"] == model_cfg.attention:
        old = init["config"]["model"]
        probe = build_model(spec, dataclasses.replace(model_cfg, num_layers=1))  # length and grid only
        new_len, new_grid = probe.length, probe.grid
        options = ckpt.adapt_options(
            model_cfg.attention,
            model_cfg.attention_options,
            old["attention_options"],
            int(init["meta"]["length"]),
            new_len,
            init["meta"].get("grid"),
            list(new_grid) if new_grid else None,
            cfg.scale_options,
        )
        model_cfg = dataclasses.replace(model_cfg, attention_options=options)
    torch.manual_seed(cfg.seed)
    model = build_model(spec, model_cfg)
    resized: list[str] = []
    if init is not None:
        grid = model.grid
        resized = ckpt.load_weights_resized(model, init, model.length, list(grid) if grid else None)
    return model, model_cfg, resized


def wrap_model(model: TaskModel, info: DistInfo) -> nn.Module:
    """``model`` as the training step calls it: DDP over the process group, or itself for one process."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _micro_batch(cfg: TrainConfig, info: DistInfo) -> int:
    per_step = info.world_size * cfg.accumulate
    if cfg.batch_size % per_step:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size x accumulate = {per_step}")
    return cfg.batch_size // per_step


def _seed_fresh(cfg: TrainConfig, info: DistInfo) -> None:
    torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # dropout stream per rank, independent of data loading
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)


def start_run(cfg: TrainConfig, info: DistInfo) -> Run:
    """Resume ``cfg.run_dir()``'s checkpoint (per ``cfg.resume``) or start afresh (from ``cfg.init_from``).

    Raises:
        ValueError: the checkpoint cannot continue with ``cfg`` (see :func:`~attnzoo.train.resume.check_resume`),
            or the batch does not split over processes and accumulation steps.
        FileExistsError: a fresh run in a folder that holds a checkpoint or a finished run (unless
            ``cfg.overwrite``, which removes them), or ``out_dir`` is a file.
    """
    from attnzoo import tasks

    path = ckpt.find_resume(cfg.run_dir(), cfg.resume, overwrite=cfg.overwrite)
    if path is None and cfg.overwrite and info.is_main:  # before any collective: no rank writes until all passed here
        for name in ckpt.RUN_OUTPUTS:
            (cfg.run_dir() / name).unlink(missing_ok=True)
    saved = load_checkpoint(path) if path else None
    requested = cfg.model.to_dict()
    new_settings = False
    if saved is not None:
        cfg, new_settings = check_resume(saved, cfg, info.world_size, path)  # type: ignore[arg-type]
    init = load_checkpoint(cfg.init_from) if cfg.init_from and saved is None else None
    sp = make_groups(cfg.sequence_parallel)
    data = data_view(info, sp)
    micro = _micro_batch(cfg, data)
    spec = tasks.get(cfg.task, **cfg.task_options)
    raw_model, model_cfg, resized = prepare_model(cfg, spec, init)
    attach(raw_model, sp)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    raw_model.to(info.device)
    splits = load_splits(cfg, info)
    optimizer = build_optimizer(raw_model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    state, position = TrainState(), {"epoch": 0, "batch": 0}
    if saved is None:
        _seed_fresh(cfg, info)
    else:
        try:
            raw_model.load_state_dict(saved["model"])
        except RuntimeError as err:
            raise ValueError(f"cannot resume {path}: its weights do not fit this model: {str(err)[:300]}") from None
        load_optimizer(optimizer, saved, keep_settings=new_settings)
        scaler.load_state_dict(saved["scaler"])
        state, position = TrainState.from_checkpoint(saved), dict(saved["data_position"])
        if new_settings:
            scheduler = build_scheduler(optimizer, cfg, done_steps=state.step)
        else:
            scheduler.load_state_dict(saved["scheduler"])
        ckpt.restore_rank_rng(saved["rng"], info, cfg.seed * 1000 + info.rank + state.step + 1)
    stream = TrainStream(splits["train"], micro, data, seed=cfg.seed, num_workers=cfg.num_workers, **position)
    meta = {
        "length": raw_model.length,
        "grid": list(raw_model.grid or []) or None,
        "version": attnzoo.__version__,
        "task_spec": dataclasses.asdict(spec),
        "requested_model": requested,
    }
    model = wrap_model(raw_model, info)
    return Run(
        cfg,
        info,
        data,
        spec,
        raw_model,
        model,
        optimizer,
        scheduler,
        scaler,
        splits,
        stream,
        state,
        meta,
        path,
        resized,
    )


def save_run(run: Run, name: str) -> None:
    """Write ``run_dir/name``: model, optimiser, schedule, scaler, every rank's RNG, step, data position, config.

    A collective (every rank's RNG state is gathered): call it on every rank; rank 0 writes.
    """
    rng = ckpt.gather_rng(run.info)
    if run.info.is_main:
        save_checkpoint(
            run.cfg.run_dir() / name,
            {
                "model": run.raw_model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "rng": rng,
                "world_size": run.info.world_size,
                **run.state.to_checkpoint(),
                "data_position": run.stream.position(),
                "config": run.cfg.to_dict(),
                "meta": run.meta,
            },
        )
