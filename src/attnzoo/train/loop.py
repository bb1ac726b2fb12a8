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

A run stops for one of :data:`STOP_REASONS`, printed when it ends and recorded as ``stopped`` in
``results.json``: ``steps`` (all ``cfg.steps`` done) or ``max_time`` (the wall-clock budget ran out
first). SIGINT (Ctrl-C) or SIGTERM stops it at the end of the current step: ``last.pt`` is written
and :class:`TrainingInterrupted` is raised (no test evaluation, no ``results.json``); a second signal
interrupts at once. When no progress bar is drawn (stderr not a terminal, or ``progress: false``)
rank 0 prints one line to stdout at every train log and dev evaluation, flushed, so a log file
shows how the run goes.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
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
from attnzoo.train.trackers import open_trackers, require_trackers

__all__ = [
    "STOP_REASONS",
    "TrainingInterrupted",
    "autocast",
    "check_finite",
    "evaluate",
    "evaluate_and_checkpoint",
    "finish",
    "log_train",
    "stop_on_signals",
    "train",
    "train_step",
]

STOP_REASONS = ("steps", "max_time")  # results.json "stopped"; a signal ends a run without results
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after its checkpoint ``last.pt`` was written at ``step``.

    ``exit_code`` is the shell's ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, run_dir: str) -> None:
        super().__init__(signum, step, run_dir)
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"stopped by {name} at step {self.step}; checkpoint {self.run_dir}/last.pt written"


@contextlib.contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM are recorded (in the yielded list) instead of interrupting.

    The loop polls the list after each step; a second signal raises ``KeyboardInterrupt`` at once.
    Outside the main thread (where Python cannot set handlers) nothing is installed. ``announce``
    prints one line on stderr when the first signal arrives.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        if announce:
            line = f"attnzoo train: {signal.Signals(signum).name}: stopping after this step (again to quit at once)"
            print(line, file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
        loss, correct, count = run.raw_model.loss(outputs, batch, cfg.label_smoothing)
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
    _refuse_nonfinite(run, record["loss"])
    rate = run.state.step / max(train_time, 1e-9)
    bar.set_postfix(loss=record["loss"], acc=record["accuracy"], steps_s=rate)
    if bar.disable and run.info.is_main:
        say(
            f"{_step_label(run)} | train loss {record['loss']:.4f} | acc {record['accuracy']:.4f} "
            f"| lr {record['lr']:.3g} | {rate:.2f} steps/s"
        )
    window.zero_()


def check_finite(run: Run, window: torch.Tensor) -> None:
    """Raise ``FloatingPointError`` when the train loss summed in ``window`` since the last log is NaN or inf.

    Called before anything is saved, so no checkpoint holds the weights that produced it. Every process
    calls it at the same steps (one small all-reduce), so all of them stop together.
    """
    total = all_reduce_sum(window[:1].clone(), run.info)
    _refuse_nonfinite(run, total.item())


def _refuse_nonfinite(run: Run, loss: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{_step_label(run)}: the train loss is {loss} (since the last log); the run stopped before saving, "
            f"so the checkpoints in {run.cfg.run_dir()} are from before it. Try a lower --lr, --grad-clip 1.0 "
            "or --precision fp32, then --resume auto --resume-with-new-settings"
        )


def say(line: str) -> None:
    """Print one progress line on stdout, flushed (a log file shows it at once)."""
    print(line, flush=True)


def _step_label(run: Run) -> str:
    return f"step {run.state.step}/{run.cfg.steps}"


def stop_reason(run: Run, received: list[int]) -> str | int | None:
    """Why the run stops after this step, agreed over all processes: ``"steps"``, ``"max_time"``, a
    signal number (SIGTERM before SIGINT when processes saw different ones) or ``None`` (go on)."""
    over = run.cfg.max_time > 0 and run.state.elapsed() > run.cfg.max_time
    flags = [float(over)] + [float(sig in received) for sig in STOP_SIGNALS]
    if run.info.enabled:
        flags = all_reduce_sum(torch.tensor(flags, device=run.info.device), run.info).tolist()
    for sig, flag in sorted(zip(STOP_SIGNALS, flags[1:], strict=True), reverse=True):
        if flag:
            return int(sig)
    if run.state.step >= run.cfg.steps:
        return "steps"
    return "max_time" if flags[0] else None


def describe_stop(run: Run, reason: str) -> str:
    """The line printed when a run ends: how many steps it did and why it stopped."""
    cfg, step = run.cfg, run.state.step
    if reason == "steps":
        return f"attnzoo train: finished {step} steps"
    return (
        f"attnzoo train: stopped at step {step} of {cfg.steps}: max_time {cfg.max_time:g} s of training reached "
        f"(continue with --resume auto --max-time 0, or a larger --max-time)"
    )


def _higher_is_better(run: Run) -> bool:
    return run.spec.metric != "mse"


def evaluate_and_checkpoint(run: Run, dev_loader: Any, logger: MetricLogger, *, verbose: bool = False) -> None:
    """Evaluate on dev, write ``best.pt`` on improvement and ``last.pt``; the clock stops meanwhile.

    ``verbose`` prints the dev scores as one line on stdout (rank 0).
    """
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
    if verbose and run.info.is_main:
        extra = "".join(f" | {key} {value:.4f}" for key, value in generation_fields(dev).items())
        best = state.best if _higher_is_better(run) else -state.best
        say(
            f"{_step_label(run)} | dev loss {dev['loss']:.4f} | acc {dev['accuracy']:.4f}{extra} "
            f"| best {best:.4f} at step {state.best_step}"
        )
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
    trackers = open_trackers(cfg.trackers(), cfg.run_dir(), cfg.to_dict()) if info.is_main else []
    return MetricLogger(
        cfg.run_dir(), enabled=info.is_main, tensorboard=cfg.tensorboard, resume_step=resume_step, trackers=trackers
    )


def finish(run: Run, logger: MetricLogger, started: float, stopped: str = "steps") -> dict[str, Any]:
    """Test the best dev checkpoint (or the final model) and write ``results.json``; returns the results.

    ``stopped`` (one of :data:`STOP_REASONS`) is recorded as ``results["stopped"]``.
    """
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
        "stopped": stopped,
        "train_time_s": state.train_time,
        "wall_time_s": time.perf_counter() - started,
        "steps_per_s": state.step / max(state.train_time, 1e-9),
        "tokens_per_s": tokens / max(state.train_time, 1e-9),
        **({"images_per_s": state.step * cfg.batch_size / max(state.train_time, 1e-9)} if spec.image_shape else {}),
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
    require_trackers(cfg.trackers())
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
        with stop_on_signals(announce=info.is_main) as received:
            reason: str | int | None = "steps" if run.state.step >= cfg.steps else None
            while reason is None:
                train_step(run, prefetch, window)
                bar.update()
                step, reason = run.state.step, stop_reason(run, received)
                if step % cfg.log_every == 0 or reason is not None:
                    log_train(run, window, logger, bar)
                elif step % cfg.eval_every == 0 or (cfg.save_every and step % cfg.save_every == 0):
                    check_finite(run, window)  # a checkpoint follows
                if isinstance(reason, int):  # a signal: save where it stands, no evaluation
                    checkpoint_last(run, logger)
                    bar.close()
                    raise TrainingInterrupted(reason, step, str(cfg.run_dir()))
                if step % cfg.eval_every == 0 or reason is not None:
                    evaluate_and_checkpoint(run, dev_loader, logger, verbose=bar.disable)
                elif cfg.save_every and step % cfg.save_every == 0:
                    checkpoint_last(run, logger)
        bar.close()
        prefetch.close()
        barrier(info)
        if info.is_main:
            print(describe_stop(run, str(reason)), file=sys.stderr, flush=True)
        return finish(run, logger, started, str(reason))
    finally:
        if prefetch is not None:
            prefetch.close()
        if logger is not None:
            logger.close()
        teardown(info)
