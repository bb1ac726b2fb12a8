"""Run a function on P gloo processes (spawned once per call) and collect each rank's return value."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        if dist.is_initialized():  # the training harness leaves the group itself
            dist.destroy_process_group()


def run_ranks(world: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``[fn(rank, world, *args) for each rank]``, each in its own process of one gloo group (1 thread each)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world, _free_port(), fn, args, out_dir), nprocs=world)
        return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(world)]
