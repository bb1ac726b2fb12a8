"""The training loop: :func:`train` reads top to bottom, one short function per concern.

Single process::

    attnzoo train --task listops-mini --attention local --attention-option window_size=16

Several processes (GPUs, or CPU with gloo), one or more nodes::

    torchrun --nproc_per_node 2 -m attnzoo.train train --task listops-mini

``train(cfg)``: :func:`~attnzoo.train.session.start_run` starts or resumes the run; then every
optimiser step is :func:`train_step` (gradient accumulation, clipping, autocast),
:func:`log_train` writes train metrics every ``log_every`` steps, :func:`evaluate_and_checkpoint`
evaluates on dev every ``eval_every`` steps (writing ``last.pt`` and, on improvement, ``best.pt``),
and :func:`finish` evaluates ``best.pt`` on test and writes ``results.json``. Rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from attnzoo.checkpoints import load_checkpoint
from attnzoo.io import atomic_write_json
from attnzoo.models import TaskModel, count_parameters
from attnzoo.progress import progress
from attnzoo.train.config import TrainConfig, describe_source
from attnzoo.train.data import Batch, Prefetcher, eval_batches
from attnzoo.train.distributed import DistInfo, all_reduce_sum, barrier, setup, teardown
from attnzoo.train.log import MetricLogger
from attnzoo.train.memory import peak_memory, reset_peak_memory
from attnzoo.train.session import Run, save_run, start_run

__all__ = ["autocast", "evaluate", "evaluate_and_checkpoint", "finish", "log_train", "train", "train_step"]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 (fp16 only on CUDA); a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: TaskModel, loader: Any, info: DistInfo, precision: str) -> dict[str, float]:
    """Loss and accuracy of ``model`` over ``loader`` (this process's shard), summed over all processes.

    A model with ``generation_metrics`` (the encoder-decoder) is also scored on greedy decoding:
    ``exact_match`` (whole target sequences right) and ``token_accuracy`` (target tokens right).
    """
    was_training = model.training
    model.eval()
    generation = getattr(model, "generation_metrics", None)
    sums = torch.zeros(7, dtype=torch.float64, device=info.device)  # loss * count, correct, count, generation
    for batch in loader:
        batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
        with autocast(info.device, precision):
            outputs = model(batch)
            counts = generation(batch) if generation is not None else {}
        loss, correct, count = model.loss(outputs, batch)
        sums[:3] += torch.stack([loss.double() * count, correct.double(), count.double()])
        if counts:
            keys = ("exact_match", "sequences", "token_accuracy", "tokens")
            sums[3:] += torch.stack([counts[key].double() for key in keys])
    all_reduce_sum(sums, info)
    model.train(was_training)
    count = max(sums[2].item(), 1.0)
    result = {"loss": sums[0].item() / count, "accuracy": sums[1].item() / count, "examples": sums[2].item()}
    if generation is not None:
        result["exact_match"] = sums[3].item() / max(sums[4].item(), 1.0)
        result["token_accuracy"] = sums[5].item() / max(sums[6].item(), 1.0)
    return result


def generation_fields(result: dict[str, float]) -> dict[str, float]:
    """The greedy-decoding scores of an :func:`evaluate` result (empty for models without them)."""
    return {key: result[key] for key in ("exact_match", "token_accuracy") if key in result}


def train_step(run: Run, batches: Iterator[Batch], window: torch.Tensor) -> None:
    """One optimiser step over ``accumulate`` micro-batches; adds ``[loss, correct, count, steps]`` to ``window``."""
    cfg, info = run.cfg, run.info
    for micro_step in range(cfg.accumulate):
        batch = next(batches)
        if info.enabled:  # sync gradients on the last micro-step only (nanoGPT)
            run.model.require_backward_grad_sync = micro_step == cfg.accumulate - 1
        with autocast(info.device, cfg.precision):
            outputs = run.model(batch)
        loss, correct, count = run.raw_model.loss(outputs, batch)
        run.scaler.scale(loss / cfg.accumulate).backward()
        share = torch.tensor(1.0 / cfg.accumulate, dtype=torch.float64, device=info.device)
        window += torch.stack([loss.detach().double() / cfg.accumulate, correct.double(), count.double(), share])
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state.step += 1


def log_train(run: Run, window: torch.Tensor, logger: MetricLogger, bar: tqdm) -> None:
    """Log the mean train loss and accuracy since the last log (over all processes); clears ``window``."""
    all_reduce_sum(window, run.info)
    train_time = run.state.clock_out()
    steps = window[3].item() / run.info.world_size
    record = {
        "step": run.state.step,
        "split": "train",
        "loss": window[0].item() / run.info.world_size / steps,
        "accuracy": window[1].item() / max(window[2].item(), 1.0),
        "lr": run.scheduler.get_last_lr()[0],
        "train_time_s": train_time,
    }
    logger.log(record, flush=False)
    bar.set_postfix(loss=record["loss"], acc=record["accuracy"], steps_s=run.state.step / max(train_time, 1e-9))
    window.zero_()


def out_of_time(run: Run) -> bool:
    """Whether any process has used up ``max_time`` seconds of training (agreed over all processes)."""
    if run.cfg.max_time <= 0:
        return False
    over = torch.tensor(float(run.state.elapsed() > run.cfg.max_time), device=run.info.device)
    return all_reduce_sum(over, run.info).item() > 0


def _higher_is_better(run: Run) -> bool:
    return run.spec.metric != "mse"


def evaluate_and_checkpoint(run: Run, dev_loader: Any, logger: MetricLogger) -> None:
    """Evaluate on dev, write ``best.pt`` on improvement and ``last.pt``; the clock stops meanwhile."""
    state = run.state
    state.clock_out()
    dev = evaluate(run.raw_model, dev_loader, run.info, run.cfg.precision)
    score = dev["accuracy"] if _higher_is_better(run) else -dev["loss"]
    if score > state.best:
        state.best, state.best_step = score, state.step
        save_run(run, "best.pt")
    save_run(run, "last.pt")
    record = {"step": state.step, "split": "dev", "loss": dev["loss"], "accuracy": dev["accuracy"]}
    logger.log({**record, **generation_fields(dev), "train_time_s": state.train_time})
    state.clock_in()


def checkpoint_last(run: Run, logger: MetricLogger) -> None:
    """An extra ``last.pt`` between evaluations (``save_every``); the clock stops meanwhile."""
    run.state.clock_out()
    save_run(run, "last.pt")
    logger.flush()
    run.state.clock_in()


def open_logs(run: Run) -> MetricLogger:
    """Say which config the run uses, write ``config.json`` and open the metric logs (rank 0)."""
    cfg, info = run.cfg, run.info
    if info.is_main:
        resumed = f" (resuming {run.resumed_from} at step {run.state.step})" if run.resumed_from else ""
        print(f"attnzoo train: {describe_source(cfg)}{resumed}", file=sys.stderr, flush=True)
        atomic_write_json(cfg.run_dir() / "config.json", cfg.to_dict())
    resume_step = run.state.step if run.resumed_from else None
    return MetricLogger(cfg.run_dir(), enabled=info.is_main, tensorboard=cfg.tensorboard, resume_step=resume_step)


def finish(run: Run, logger: MetricLogger, started: float) -> dict[str, Any]:
    """Test the best dev checkpoint (or the final model) and write ``results.json``; returns the results."""
    cfg, info, state, spec = run.cfg, run.info, run.state, run.spec
    best_path = cfg.run_dir() / "best.pt"
    if best_path.is_file():
        run.raw_model.load_state_dict(load_checkpoint(best_path, info.device)["model"])
    test = evaluate(run.raw_model, eval_batches(run.splits["test"], run.micro_batch, run.data), info, cfg.precision)
    peak, peak_kind = peak_memory(info.device)
    higher = _higher_is_better(run)
    tokens = state.step * cfg.batch_size * spec.seq_len * (2 if spec.paired else 1)
    results = {
        "task": cfg.task,
        "attention": cfg.model.attention,
        "seed": cfg.seed,
        "metric": spec.metric,
        "accuracy": test["accuracy"],
        **generation_fields(test),
        "loss": test["loss"],
        "test_examples": test["examples"],
        "dev_accuracy": state.best if higher else None,
        "dev_loss": -state.best if not higher else None,
        "best_step": state.best_step,
        "steps": state.step,
        "train_time_s": state.train_time,
        "wall_time_s": time.perf_counter() - started,
        "steps_per_s": state.step / max(state.train_time, 1e-9),
        "tokens_per_s": tokens / max(state.train_time, 1e-9),
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "parameters": count_parameters(run.raw_model),
        "world_size": info.world_size,
        "device": str(info.device),
        "torch": torch.__version__,
        "resized_from_init": run.resized,
        "config_file": cfg.config_file,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
    }
    if info.is_main:
        record = {"step": state.step, "split": "test", "loss": test["loss"], "accuracy": test["accuracy"]}
        logger.log({**record, **generation_fields(test), "train_time_s": state.train_time})
        atomic_write_json(cfg.run_dir() / "results.json", results)
    return results


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate on dev every ``cfg.eval_every`` steps, test at the best dev point.

    Returns:
        The results dict also written to ``<run_dir>/results.json`` (``accuracy`` and ``loss`` on
        test, ``dev_accuracy``, ``steps_per_s``, ``tokens_per_s``, ``peak_memory_mb``,
        ``parameters``, ``config`` (with the model config actually built), ``config_file``, ...).
    """
    cfg.validate()
    info = setup(cfg.device)
    reset_peak_memory(info.device)
    prefetch: Prefetcher | None = None
    logger: MetricLogger | None = None
    try:
        run = start_run(cfg, info)
        cfg = run.cfg
        logger = open_logs(run)
        prefetch = Prefetcher(run.stream, info.device, cfg.prefetch)
        dev_loader = eval_batches(run.splits["dev"], run.micro_batch, run.data, limit=cfg.eval_batches)
        desc = f"{cfg.task}/{cfg.model.attention}"
        bar = progress(total=cfg.steps, desc=desc, enabled=cfg.progress and info.is_main, initial=run.state.step)
        window = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss sum, correct, count, steps
        started = time.perf_counter()
        run.state.clock_in()
        run.model.train()
        while run.state.step < cfg.steps:
            train_step(run, prefetch, window)
            bar.update()
            step, last = run.state.step, run.state.step == cfg.steps
            if step % cfg.log_every == 0 or last:
                log_train(run, window, logger, bar)
            stop = out_of_time(run)
            if step % cfg.eval_every == 0 or last or stop:
                evaluate_and_checkpoint(run, dev_loader, logger)
            elif cfg.save_every and step % cfg.save_every == 0:
                checkpoint_last(run, logger)
            if stop:
                break
        bar.close()
        prefetch.close()
        barrier(info)
        return finish(run, logger, started)
    finally:
        if prefetch is not None:
            prefetch.close()
        if logger is not None:
            logger.close()
        teardown(info)
