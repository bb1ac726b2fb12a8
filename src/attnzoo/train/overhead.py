"""How much the harness adds to the model's own compute (``attnzoo train ... --profile-overhead``).

``raw``: the bare step ``forward -> loss -> backward -> AdamW step -> zero_grad`` on batches
already collated in memory (also timed without the optimiser step). ``harness``: :func:`train` with
the same config (data stream, prefetch thread, logging, scheduler, progress), timed by its own
``train_time_s`` between two train log records, so evaluation and start-up are not counted.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import torch

from attnzoo.train.config import TrainConfig
from attnzoo.train.data import load_splits
from attnzoo.train.distributed import DistInfo, pick_device
from attnzoo.train.log import read_records
from attnzoo.train.loop import autocast, train
from attnzoo.train.optim import build_optimizer
from attnzoo.train.session import prepare_model

__all__ = ["measure_overhead"]


def _raw_rate(cfg: TrainConfig, steps: int, warmup: int, optimizer_step: bool) -> float:
    """Optimiser steps per second of the bare loop."""
    from attnzoo import tasks

    info = DistInfo(0, 0, 1, pick_device(cfg.device))
    spec = tasks.get(cfg.task, **cfg.task_options)
    model, _, _ = prepare_model(cfg, spec, None)
    model.to(info.device).train()
    optimizer = build_optimizer(model, cfg)
    train_set = load_splits(cfg, info)["train"]
    micro = cfg.batch_size // cfg.accumulate
    pool = [tasks.collate([train_set[(b * micro + i) % len(train_set)] for i in range(micro)]) for b in range(8)]
    pool = [{k: v.to(info.device) for k, v in batch.items()} for batch in pool]
    torch.manual_seed(cfg.seed)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            start = time.perf_counter()
        for micro_step in range(cfg.accumulate):
            batch = pool[(step * cfg.accumulate + micro_step) % len(pool)]
            with autocast(info.device, cfg.precision):
                outputs = model(batch)
            loss, _, _ = model.loss(outputs, batch)
            (loss / cfg.accumulate).backward()
        if optimizer_step:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    return steps / (time.perf_counter() - start)


def _harness_rate(cfg: TrainConfig, steps: int, warmup: int) -> float:
    """Steps per second of :func:`train` between its step-``warmup`` and last log records."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(
            cfg,
            steps=warmup + steps,
            eval_every=warmup + steps,
            log_every=warmup,
            eval_batches=1,
            out_dir=tmp,
            resume="",
            init_from="",
            tensorboard=False,
            progress=False,
            save_every=0,
        )
        train(run)
        records = [r for r in read_records(f"{tmp}/metrics.jsonl") if r["split"] == "train"]
    first = next(r for r in records if r["step"] == warmup)
    last = records[-1]
    return (last["step"] - first["step"]) / (last["train_time_s"] - first["train_time_s"])


def measure_overhead(cfg: TrainConfig, *, steps: int = 60, warmup: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Steps/s of the raw model step and of the harness; overhead = raw rate / harness rate - 1.

    Each measurement is repeated ``repeats`` times, alternating, and the best rate is kept (the
    machine may be shared). Returns the rates, the overheads in percent and the setup.
    """
    raw, bare, harness = [], [], []
    for _ in range(repeats):
        raw.append(_raw_rate(cfg, steps, warmup, optimizer_step=True))
        bare.append(_raw_rate(cfg, steps, warmup, optimizer_step=False))
        harness.append(_harness_rate(cfg, steps, warmup))
    best_raw, best_bare, best_harness = max(raw), max(bare), max(harness)
    return {
        "task": cfg.task,
        "attention": cfg.model.attention,
        "batch_size": cfg.batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "device": str(pick_device(cfg.device)),
        "threads": torch.get_num_threads(),
        "raw_fwd_bwd_opt_steps_per_s": best_raw,
        "raw_fwd_bwd_steps_per_s": best_bare,
        "harness_steps_per_s": best_harness,
        "overhead_vs_fwd_bwd_opt_pct": 100.0 * (best_raw / best_harness - 1.0),
        "overhead_vs_fwd_bwd_pct": 100.0 * (best_bare / best_harness - 1.0),
        "all_rates": {"raw": raw, "fwd_bwd": bare, "harness": harness},
    }
