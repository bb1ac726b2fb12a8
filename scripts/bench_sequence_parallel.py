"""Sequence-parallel LongNet on CPU: P gloo processes (1 thread each) vs 1 process (1 thread), same total N.

Usage::

    python3 scripts/bench_sequence_parallel.py --n 16384 65536 --world 2 4 --repeats 3

Prints one JSON line per (N, P), each figure the maximum over ranks: forward+backward wall and CPU
seconds per rank (minimum over repeats; on a shared machine the CPU seconds are the work, the wall
clock adds the waiting), memory per rank, bytes handed to ``all_to_all_single`` in one forward and
the communication model's figure. Memory (MiB, resident set from ``/proc/self/status``):
``base_mib`` the process before the run (Python + torch + attnzoo + the gloo group, which adds
``gloo_mib``), ``peak_mib``
its peak over all repeats (``first_peak_mib``: over the first; later steps also hold what the
allocator kept from the earlier ones), ``added_mib`` peak - base (inputs included). A ``floor`` line per P
runs the same at N = ``--floor-n`` (the per-process cost that does not shrink with P: the base, the
first run's code pages and allocator arenas, autograd's first backward); ``ratios`` compare each P
with the single process: raw (peak / peak) and above the floor ((peak - floor) / (peak - floor));
with several N, ``per_token_slope_ratios`` compare the growth of the peak per token between the
smallest and the largest N (the floor cancels; 1/P is perfect scaling).
``--breakdown`` first prints the floor's parts: bare Python, + ``import torch``, + attnzoo.
Branches: LongNet's geometric configuration w_i = 2048 * 2^i up to N, r_i = 2^i; B=1, H=4, d=64, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
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


def _memory() -> dict[str, float]:
    """Resident set now (``VmRSS``) and its peak (``VmHWM``), MiB."""
    with open("/proc/self/status") as f:
        found = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    return {"rss": found["VmRSS"], "peak": found["VmHWM"]}


def measure(n: int, world: int, rank: int, repeats: int) -> dict[str, float]:
    """Time, memory and traffic of one rank (world = 1: the single-device mechanism on the whole N)."""
    torch.manual_seed(0)
    base = _memory()["rss"]
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
        q.grad = k.grad = v.grad = None

    times, cpu, peaks = [], [], []
    for _ in range(repeats):
        if world > 1:
            dist.barrier()
        sent.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        peaks.append(_memory()["peak"])
    peak = peaks[-1]
    # sent: the last repeat's forward and backward exchanges; the backward returns what the forward sent
    return {
        "seconds": min(times), "cpu_seconds": min(cpu), "base_mib": base, "first_peak_mib": peaks[0],
        "peak_mib": peak, "added_mib": peak - base, "sent_bytes": sum(sent) / 2,
    }  # fmt: skip


def _entry(rank: int, world: int, port: int, n: int, repeats: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    before = _memory()["rss"]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        found = measure(n, world, rank, repeats)
        torch.save({**found, "gloo_mib": found["base_mib"] - before}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run(n: int, world: int, repeats: int) -> dict[str, float]:
    """Per-rank maxima over the ranks of one (N, P) run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:  # fresh processes: VmHWM starts from the import
        mp.spawn(_entry, args=(world, port, n, repeats, out_dir), nprocs=world)
        found = [torch.load(os.path.join(out_dir, f"{r}.pt")) for r in range(world)]
    segs, rates = branches(n)
    model = communication_model(n, world, segs, rates, heads=HEADS, head_dim=DIM) if world > 1 else 0.0
    row = {key: max(f[key] for f in found) for key in found[0]}
    return {"n": n, "world": world, **row, "model_bytes": model, "load": os.getloadavg()[0]}


def breakdown() -> dict[str, float]:
    """Resident MiB of a bare Python, after ``import torch`` and after importing attnzoo's mechanism."""
    found = {}
    for name, code in (
        ("python", ""),
        ("torch", "import torch"),
        ("attnzoo", "import torch, attnzoo.ops.dilated.parallel"),
    ):
        script = f"{code}\nprint([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
        found[name] = int(subprocess.check_output([sys.executable, "-c", script], text=True)) / 1024
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--world", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor-n", type=int, default=2048)
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args(argv)
    if args.breakdown:
        print(json.dumps({"breakdown_mib": breakdown()}), flush=True)
    worlds = [1, *args.world]
    floors, measured = {}, {}
    for world in worlds:
        floors[world] = run(args.floor_n, world, args.repeats)
        print(json.dumps({"floor": True, **floors[world]}), flush=True)
    for n in args.n:
        rows = {}
        for world in worlds:
            rows[world] = run(n, world, args.repeats)
            print(json.dumps(rows[world]), flush=True)
        ratios = {
            world: {
                **{
                    f"{name}{key}": (rows[world][key] - floors[world][key] * above)
                    / (rows[1][key] - floors[1][key] * above)
                    for key in ("first_peak_mib", "peak_mib")
                    for name, above in (("raw_", 0), ("above_floor_", 1))
                },
                "cpu": rows[world]["cpu_seconds"] / rows[1]["cpu_seconds"],
            }
            for world in args.world
        }
        print(json.dumps({"n": n, "ratios": ratios}), flush=True)
        measured[n] = rows
    if len(measured) > 1:  # memory per token: the slope between the smallest and the largest N
        (n0, low), (n1, high) = min(measured.items()), max(measured.items())
        slopes = {w: {k: (high[w][k] - low[w][k]) / (n1 - n0) for k in ("first_peak_mib", "peak_mib")} for w in worlds}
        ratios = {w: {k: slopes[w][k] / slopes[1][k] for k in slopes[w]} for w in args.world}
        print(json.dumps({"per_token_slope_ratios": ratios, "between": [n0, n1]}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
