"""Sequence-parallel LongNet on CPU: P gloo processes (1 thread each) vs 1 process (1 thread), same total N.

Usage::

    python3 scripts/bench_sequence_parallel.py --n 16384 65536 --world 2 --repeats 3

Prints one JSON line per (N, P), each figure the maximum over ranks: forward+backward wall and CPU
seconds per rank (minimum over repeats; on a shared machine the CPU seconds are the work, the wall
clock adds the waiting), peak resident memory added by the run (inputs included), bytes handed to
``all_to_all_single`` in one forward, and the communication model's figure.
Branches: LongNet's geometric configuration w_i = 2048 * 2^i up to N, r_i = 2^i; B=1, H=4, d=64, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnzoo.ops.dilated import dilated_attention
from attnzoo.ops.dilated.parallel import dilated_attention_parallel
from attnzoo.ops.dilated.parallel_plan import chunk_bounds, communication_model

HEADS, DIM = 4, 64


def branches(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """LongNet's geometric branches up to N: (2048, 4096, ...), (1, 2, ...)."""
    ws = [2048 * 2**i for i in range(40) if 2048 * 2**i <= max(n, 2048)]
    return tuple(ws), tuple(2**i for i in range(len(ws)))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(n: int, world: int, rank: int, repeats: int) -> dict[str, float]:
    """Time, memory and traffic of one rank (world = 1: the single-device mechanism on the whole N)."""
    torch.manual_seed(0)
    base = _rss_mib()
    start, stop = chunk_bounds(n, world)[rank]
    q, k, v = (torch.randn(1, HEADS, stop - start, DIM, requires_grad=True) for _ in range(3))
    segs, rates = branches(n)
    sent: list[int] = []
    if world > 1:
        original = dist.all_to_all_single

        def counting(output, tensor, *args, **kwargs):
            sent.append(tensor.numel() * tensor.element_size())
            return original(output, tensor, *args, **kwargs)

        dist.all_to_all_single = counting

    def step() -> None:
        kw = dict(segment_lengths=segs, dilation_rates=rates)
        out = dilated_attention_parallel(q, k, v, seq_len=n, **kw) if world > 1 else dilated_attention(q, k, v, **kw)
        out.sum().backward()

    times, cpu = [], []
    for _ in range(repeats):
        if world > 1:
            dist.barrier()
        sent.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # sent: the last repeat's forward and backward exchanges; the backward returns what the forward sent
    return {"seconds": min(times), "cpu_seconds": min(cpu), "peak_mib": _rss_mib() - base, "sent_bytes": sum(sent) / 2}


def _entry(rank: int, world: int, port: int, n: int, repeats: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(measure(n, world, rank, repeats), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run(n: int, world: int, repeats: int) -> dict[str, float]:
    """Per-rank maxima over the ranks of one (N, P) run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:  # fresh processes: ru_maxrss starts from the import
        mp.spawn(_entry, args=(world, port, n, repeats, out_dir), nprocs=world)
        found = [torch.load(os.path.join(out_dir, f"{r}.pt")) for r in range(world)]
    segs, rates = branches(n)
    model = communication_model(n, world, segs, rates, heads=HEADS, head_dim=DIM) if world > 1 else 0.0
    row = {key: max(f[key] for f in found) for key in found[0]}
    return {"n": n, "world": world, **row, "model_bytes": model, "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for n in args.n:
        for world in (1, args.world):
            print(json.dumps(run(n, world, args.repeats)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
