"""Data for the loop: the task's splits, a resumable shuffled train stream and sharded eval batches.

The train stream shuffles with ``DistributedSampler(seed, epoch)`` (one process: ``num_replicas=1``),
so the order depends only on the seed and the epoch, never on the global RNG; its position
``(epoch, batch)`` goes into checkpoints and a resumed run continues with the very next batch.
A background thread (plus optional DataLoader workers) prepares the next batches and moves them to
the device while the model computes, so data loading overlaps compute.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from attnzoo.checkpoints import load_run_split
from attnzoo.train.distributed import DistInfo, barrier

__all__ = ["Batch", "Prefetcher", "TrainStream", "eval_batches", "load_splits", "to_device"]

Batch = dict[str, torch.Tensor]


def load_splits(cfg: Any, info: DistInfo) -> dict[str, Dataset]:
    """``{"train", "dev", "test"}`` datasets of ``cfg.task`` (rank 0 generates/caches first, others wait)."""
    config = cfg.to_dict()
    if not info.is_main:
        barrier(info)
    splits = {split: load_run_split(config, split) for split in ("train", "dev", "test")}
    if info.is_main:
        barrier(info)
    return splits


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Every tensor of ``batch`` on ``device`` (non-blocking from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _loader(dataset: Dataset, batch_sampler: Any, num_workers: int, device: torch.device) -> DataLoader:
    from attnzoo import tasks

    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=tasks.collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG untouched
    )


class TrainStream:
    """Endless micro-batches of ``micro_batch`` examples for this process, epoch after epoch.

    Args:
        dataset: the train split.
        micro_batch: examples per forward pass on this process.
        info: process placement (the sampler shards by rank).
        seed: shuffling seed.
        epoch, batch: where to start (from a checkpoint's ``data_position``).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        dataset: Dataset,
        micro_batch: int,
        info: DistInfo,
        *,
        seed: int,
        epoch: int = 0,
        batch: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.micro_batch, self.info = dataset, micro_batch, info
        self.seed, self.num_workers = seed, num_workers
        self.epoch, self.batch = epoch, batch
        per_rank = len(dataset) // info.world_size  # type: ignore[arg-type]
        self.batches_per_epoch = per_rank // micro_batch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the train split has {len(dataset)} examples: fewer than one batch of {micro_batch} "  # type: ignore[arg-type]
                f"per process x {info.world_size} processes; lower batch_size or raise train_size"
            )

    def position(self) -> dict[str, int]:
        """``{"epoch", "batch"}`` of the next micro-batch to be consumed."""
        return {"epoch": self.epoch, "batch": self.batch}

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.info.world_size,
            rank=self.info.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        batches = itertools.islice(BatchSampler(sampler, self.micro_batch, drop_last=True), start, None)
        return iter(_loader(self.dataset, list(batches), self.num_workers, self.info.device))

    def produce(self) -> Iterator[tuple[int, int, Batch]]:
        """``(epoch, batch index, batch)`` forever, from the current position (runs in the prefetch thread)."""
        epoch, start = self.epoch, self.batch
        while True:
            for i, batch in enumerate(self._epoch_batches(epoch, start), start=start):
                yield epoch, i, batch
            epoch, start = epoch + 1, 0

    def advance(self, epoch: int, index: int) -> None:
        """Record that micro-batch ``index`` of ``epoch`` was consumed."""
        self.epoch, self.batch = (epoch, index + 1) if index + 1 < self.batches_per_epoch else (epoch + 1, 0)


class Prefetcher:
    """Runs ``stream.produce()`` in a daemon thread, ``depth`` batches ahead, already on ``device``.

    ``next(prefetcher)`` returns the next batch and advances the stream's position.
    """

    _DONE = object()

    def __init__(self, stream: TrainStream, device: torch.device, depth: int = 2) -> None:
        self.stream, self.device = stream, device
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="attnzoo-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for epoch, index, batch in self.stream.produce():
                item = (epoch, index, to_device(batch, self.device))
                while not self.stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except BaseException as err:  # surfaced in the consumer
            self.queue.put(err)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        epoch, index, batch = item
        self.stream.advance(epoch, index)
        return batch

    def close(self) -> None:
        """Stop the thread (pending batches are dropped)."""
        self.stop.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)
            self.thread.join(timeout=0.05)


def eval_batches(
    dataset: Dataset, batch_size: int, info: DistInfo, *, limit: int = 0, num_workers: int = 0
) -> DataLoader:
    """In-order batches of this process's shard (indices ``rank::world``, no padding, so counts are exact).

    ``limit > 0`` keeps the first ``limit * batch_size * world_size`` examples.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if limit:
        n = min(n, limit * batch_size * info.world_size)
    indices = list(range(info.rank, n, info.world_size))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return _loader(dataset, batches, num_workers, info.device)
