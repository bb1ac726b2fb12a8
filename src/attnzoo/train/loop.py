"""The training loop: one function, read top to bottom.

Single process::

    attnzoo train --task listops-mini --attention local --attention-option window_size=16

Several processes (GPUs, or CPU with gloo), one or more nodes::

    torchrun --nproc_per_node 2 -m attnzoo.train train --task listops-mini

``train(cfg)`` builds the model for the task, trains ``cfg.steps`` AdamW steps (gradient
accumulation, clipping, autocast), evaluates on dev every ``eval_every`` steps (writing
``last.pt`` and, on improvement, ``best.pt``), then evaluates ``best.pt`` on test and writes
``results.json``. Rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import attnzoo
from attnzoo.io import atomic_write_json
from attnzoo.models import TaskModel, build_model, count_parameters
from attnzoo.progress import progress
from attnzoo.train import checkpoint as ckpt_io
from attnzoo.train.config import TrainConfig
from attnzoo.train.data import Prefetcher, TrainStream, eval_batches, load_splits
from attnzoo.train.distributed import DistInfo, all_reduce_sum, barrier, setup, teardown
from attnzoo.train.log import MetricLogger
from attnzoo.train.optim import build_optimizer, build_scheduler

__all__ = ["autocast", "evaluate", "prepare_model", "train"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 (fp16 only on CUDA); a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: TaskModel, loader: Any, info: DistInfo, precision: str) -> dict[str, float]:
    """Loss and accuracy of ``model`` over ``loader`` (this process's shard), summed over all processes."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # loss * count, correct, count
    for batch in loader:
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        with autocast(info.device, precision):
            outputs = model(batch)
        loss, correct, count = model.loss(outputs, batch)
        sums += torch.stack([loss.double() * count, correct.double(), count.double()])
    all_reduce_sum(sums, info)
    model.train(was_training)
    count = max(sums[2].item(), 1.0)
    return {"loss": sums[0].item() / count, "accuracy": sums[1].item() / count, "examples": sums[2].item()}


def prepare_model(cfg: TrainConfig, spec: Any, init: dict[str, Any] | None) -> tuple[TaskModel, list[str]]:
    """Build the model (seeded with ``cfg.seed``); with ``init`` (a checkpoint) adapt options and load its weights."""
    model_cfg = cfg.model
    if init is not None:
        old = init["config"]["model"]
        if old["attention"] == model_cfg.attention:
            probe = build_model(spec, dataclasses.replace(model_cfg, num_layers=1))  # length and grid only
            new_len, new_grid = probe.encoder.embed.length, probe.encoder.embed.grid
            options = ckpt_io.adapt_options(
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
        grid = model.encoder.embed.grid
        resized = ckpt_io.load_weights_resized(model, init, model.encoder.embed.length, list(grid) if grid else None)
    return model, resized


def _reset_peak_memory(device: torch.device) -> None:
    """Start peak-memory accounting afresh (CUDA allocator; on Linux the process VmHWM via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB since :func:`_reset_peak_memory`, and how it was measured."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024, "process VmHWM"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate on dev every ``cfg.eval_every`` steps, test at the best dev point.

    Returns:
        The results dict also written to ``<run_dir>/results.json`` (``accuracy`` and ``loss`` on
        test, ``dev_accuracy``, ``steps_per_s``, ``tokens_per_s``, ``peak_memory_mb``,
        ``parameters``, ``config``, ``seed``, ...).
    """
    from attnzoo import tasks

    cfg.validate()
    info = setup(cfg.device)
    _reset_peak_memory(info.device)
    run_dir = cfg.run_dir()
    prefetch: Prefetcher | None = None
    logger: MetricLogger | None = None
    try:
        resume = ckpt_io.find_resume(run_dir, cfg.resume)
        state = ckpt_io.load_checkpoint(resume) if resume else None
        if state is not None and state["config"]["model"] != cfg.model.to_dict():
            raise ValueError(f"cannot resume {resume}: its model config differs from this run's")
        init = ckpt_io.load_checkpoint(cfg.init_from) if cfg.init_from and state is None else None
        spec = tasks.get(cfg.task, **cfg.task_options)
        raw_model, resized = prepare_model(cfg, spec, init)
        raw_model.to(info.device)
        splits = load_splits(cfg, info)
        per_step = info.world_size * cfg.accumulate
        if cfg.batch_size % per_step:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size x accumulate = {per_step}")
        micro = cfg.batch_size // per_step
        ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        model: nn.Module = DistributedDataParallel(raw_model, **ddp_kwargs) if info.enabled else raw_model
        optimizer, scheduler = build_optimizer(raw_model, cfg), None
        scheduler = build_scheduler(optimizer, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        step, best, best_step, position, train_time = 0, -math.inf, 0, {"epoch": 0, "batch": 0}, 0.0
        if state is not None:
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            step, best, best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
            position, train_time = dict(state["data_position"]), float(state["train_time"])
            ckpt_io.restore_rng(state["rng"])
            if info.rank:
                torch.manual_seed(cfg.seed * 1000 + info.rank + step)
        else:
            torch.manual_seed(cfg.seed * 1000 + info.rank + 1)  # dropout stream, independent of data loading
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        meta = {
            "length": raw_model.encoder.embed.length,
            "grid": list(raw_model.encoder.embed.grid or []) or None,
            "version": attnzoo.__version__,
            "task_spec": dataclasses.asdict(spec),
        }
        logger = MetricLogger(
            run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, resume_step=step if state is not None else None
        )
        if info.is_main:
            atomic_write_json(run_dir / "config.json", cfg.to_dict())
        stream = TrainStream(splits["train"], micro, info, seed=cfg.seed, num_workers=cfg.num_workers, **position)
        prefetch = Prefetcher(stream, info.device, cfg.prefetch)
        dev_loader = eval_batches(splits["dev"], micro, info, limit=cfg.eval_batches)
        higher_better = spec.metric != "mse"

        def save(name: str) -> None:
            if info.is_main:
                ckpt_io.save_checkpoint(
                    run_dir / name,
                    {
                        "model": raw_model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": ckpt_io.capture_rng(),
                        "step": step,
                        "best": best,
                        "best_step": best_step,
                        "data_position": stream.position(),
                        "train_time": train_time,
                        "config": cfg.to_dict(),
                        "meta": meta,
                    },
                )

        bar = progress(total=cfg.steps, desc=f"{cfg.task}/{cfg.model.attention}", force=False)
        bar.enabled = bar.enabled and cfg.progress and info.is_main
        bar.count = step
        window = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss sum, correct, count, steps
        wall_start = mark = time.perf_counter()
        model.train()
        while step < cfg.steps:
            for micro_step in range(cfg.accumulate):
                batch = next(prefetch)
                if info.enabled:  # sync gradients on the last micro-step only (nanoGPT)
                    model.require_backward_grad_sync = micro_step == cfg.accumulate - 1
                with autocast(info.device, cfg.precision):
                    outputs = model(batch)
                loss, correct, count = raw_model.loss(outputs, batch)
                scaler.scale(loss / cfg.accumulate).backward()
                window += torch.stack(
                    [
                        loss.detach().double() / cfg.accumulate,
                        correct.double(),
                        count.double(),
                        torch.tensor(1.0 / cfg.accumulate, dtype=torch.float64, device=info.device),
                    ]
                )
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            bar.update()
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last:
                all_reduce_sum(window, info)
                now = time.perf_counter()
                train_time += now - mark
                mark = now
                n_steps = window[3].item() / info.world_size
                record = {
                    "step": step,
                    "split": "train",
                    "loss": window[0].item() / info.world_size / n_steps,
                    "accuracy": window[1].item() / max(window[2].item(), 1.0),
                    "lr": scheduler.get_last_lr()[0],
                    "train_time_s": train_time,
                }
                logger.log(record, flush=False)
                bar.set_postfix(loss=record["loss"], acc=record["accuracy"], steps_s=step / max(train_time, 1e-9))
                window.zero_()
            out_of_time = torch.tensor(
                float(cfg.max_time > 0 and train_time + time.perf_counter() - mark > cfg.max_time)
            )
            if cfg.max_time > 0:
                out_of_time = all_reduce_sum(out_of_time.to(info.device), info).cpu()
            if step % cfg.eval_every == 0 or last or out_of_time.item() > 0:
                train_time += time.perf_counter() - mark
                dev = evaluate(raw_model, dev_loader, info, cfg.precision)
                score = dev["accuracy"] if higher_better else -dev["loss"]
                if score > best:
                    best, best_step = score, step
                    save("best.pt")
                save("last.pt")
                logger.log(
                    {
                        "step": step,
                        "split": "dev",
                        "loss": dev["loss"],
                        "accuracy": dev["accuracy"],
                        "train_time_s": train_time,
                    }
                )
                mark = time.perf_counter()
            elif cfg.save_every and step % cfg.save_every == 0:
                save("last.pt")
                logger.flush()
                mark = time.perf_counter()
            if out_of_time.item() > 0:
                break
        bar.close()
        prefetch.close()
        barrier(info)
        best_path = run_dir / "best.pt"
        if best_path.is_file():
            raw_model.load_state_dict(ckpt_io.load_checkpoint(best_path, info.device)["model"])
        test = evaluate(raw_model, eval_batches(splits["test"], micro, info), info, cfg.precision)
        peak, peak_kind = _peak_memory(info.device)
        examples = step * cfg.batch_size
        results = {
            "task": cfg.task,
            "attention": cfg.model.attention,
            "seed": cfg.seed,
            "metric": spec.metric,
            "accuracy": test["accuracy"],
            "loss": test["loss"],
            "test_examples": test["examples"],
            "dev_accuracy": best if higher_better else None,
            "dev_loss": -best if not higher_better else None,
            "best_step": best_step,
            "steps": step,
            "train_time_s": train_time,
            "wall_time_s": time.perf_counter() - wall_start,
            "steps_per_s": step / max(train_time, 1e-9),
            "tokens_per_s": examples * spec.seq_len * (2 if spec.paired else 1) / max(train_time, 1e-9),
            "peak_memory_mb": peak,
            "peak_memory_kind": peak_kind,
            "parameters": count_parameters(raw_model),
            "world_size": info.world_size,
            "device": str(info.device),
            "torch": torch.__version__,
            "resized_from_init": resized,
            "config": cfg.to_dict(),
        }
        if info.is_main:
            logger.log(
                {
                    "step": step,
                    "split": "test",
                    "loss": test["loss"],
                    "accuracy": test["accuracy"],
                    "train_time_s": train_time,
                }
            )
            atomic_write_json(run_dir / "results.json", results)
        return results
    finally:
        if prefetch is not None:
            prefetch.close()
        if logger is not None:
            logger.close()
        teardown(info)
