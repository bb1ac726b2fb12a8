"""Engine timing against the FLOP floor and public implementations (docs/engine.md).

Run with the peers venv (lucidrains' local-attention installed, attnzoo and torch from the system):

    /work/peers-venv/bin/python scripts/engine_bench.py floor --repeats 3
    /work/peers-venv/bin/python scripts/engine_bench.py crossover --repeats 3

``floor``: this machine's fp32 matmul peak, then at N = 16384 (B=1, H=8, d=64) local (sliding, 384 keys on
each side: 769 keys per query), lucidrains ``LocalAttention(window_size=256, look_backward=1,
look_forward=1)`` (768 keys per query), dilated (2048/4096/8192, r 1/2/4) and torchscale's
``DilatedAttention`` algorithm emulated with PyTorch's CPU flash kernel, all interleaved in one process;
"engine without fast paths" turns the band and dense paths off. ``crossover``: softmax (SDPA), local
(window 256) and dilated against N, with the path ``auto`` takes. Times: min over repeats after a warm-up
(the machine is shared; the load average is printed with every row); ``--cpu-time`` measures one thread's
CPU time instead, which other jobs on the cores do not inflate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor

import attnzoo.sparse.engine as engine
import attnzoo.sparse.executors as executors
from attnzoo.ops.dilated import dilated_attention, dilated_entries, head_offsets
from attnzoo.ops.local import LocalWindow, local_attention, local_entries
from attnzoo.sparse.dense import prefer_dense
from attnzoo.sparse.patterns import dilated_segments, sliding_window

B, H, D = 1, 8, 64
SEGMENTS, RATES = (2048, 4096, 8192), (1, 2, 4)
BACKWARD = 2.5  # backward matmuls per forward matmul: S recomputed, dV, dP, dQ, dK (5 vs 2)


def load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


CLOCK = time.perf_counter


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Min time of ``fn`` over ``repeats`` runs after one warm-up (wall, or CPU time with ``--cpu-time``)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        best = min(best, CLOCK() - start)
    return best


def matmul_peak(repeats: int) -> float:
    """fp32 GFLOP/s: best of a square GEMM and the batched GEMM shapes attention uses."""
    best = 0.0
    for b, m, k, n in ((1, 2048, 2048, 2048), (64, 256, 64, 1024), (64, 256, 1024, 64), (16, 1024, 64, 1024)):
        x, y = torch.randn(b, m, k), torch.randn(b, k, n)
        best = max(best, 2 * b * m * k * n / timed(lambda x=x, y=y: torch.matmul(x, y), repeats) / 1e9)
    return best


def fwd(fn: Callable[..., Tensor], *args: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(*args)

    return run


def train(fn: Callable[..., Tensor], *args: Tensor) -> Callable[[], object]:
    def run() -> object:
        leaves = [a.detach().requires_grad_() for a in args]
        fn(*leaves).sum().backward()
        return leaves

    return run


@contextmanager
def fast_paths(enabled: bool):
    """Turn the band and dense fast paths off (the engine as it was before them)."""
    find_band, prefer = executors.find_band, engine.prefer_dense
    if not enabled:
        executors.find_band = lambda *args: None
        engine.prefer_dense = lambda *args: False
    try:
        yield
    finally:
        executors.find_band, engine.prefer_dense = find_band, prefer


def torchscale_dilated(
    q: Tensor, k: Tensor, v: Tensor, segments: tuple[int, ...] = SEGMENTS, rates: tuple[int, ...] = RATES
) -> Tensor:
    """torchscale's ``DilatedAttention`` algorithm: per branch gather each head's rows, one flash call over all
    segments, scatter back; mix branches by softmax of their lse computed under ``no_grad``."""
    b, h, n, d = q.shape
    outs, lses = [], []
    for segment, r in zip(segments, rates, strict=True):
        w = min(segment, n)  # N a multiple of every w, w of r (no padding here)
        rows = torch.tensor(head_offsets(h, r))[:, None, None] + torch.arange(0, n, w)[None, :, None]
        rows = (rows + torch.arange(0, w, r)[None, None, :]).reshape(h, -1)  # (H, N / r) kept rows per head
        flat = (torch.arange(h)[:, None] * n + rows).reshape(-1)
        qs, ks, vs = (x.reshape(b, h * n, d)[:, flat].view(b, h, n // w, w // r, d).transpose(1, 2) for x in (q, k, v))
        qs, ks, vs = (x.reshape(b * (n // w), h, w // r, d) for x in (qs, ks, vs))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qs, ks, vs, 0.0, False)
        out = out.view(b, n // w, h, w // r, d).transpose(1, 2).reshape(b, h * (n // r), d)
        lse = lse.view(b, n // w, h, w // r).transpose(1, 2).reshape(b, h * (n // r))
        outs.append(q.new_zeros(b, h * n, d).index_copy(1, flat, out).view(b, h, n, d))
        lses.append(q.new_full((b, h * n), -1e8).index_copy(1, flat, lse).view(b, h, n))
    with torch.no_grad():
        weights = torch.softmax(torch.stack(lses), dim=0)
    return sum(o * w[..., None] for o, w in zip(outs, weights, strict=True))  # type: ignore[return-value]


def lucidrains_local() -> Callable[[Tensor, Tensor, Tensor], Tensor] | None:
    try:
        from local_attention import LocalAttention
    except ImportError:
        return None
    module = LocalAttention(window_size=256, causal=False, look_backward=1, look_forward=1, autopad=True)
    return lambda q, k, v: module(q, k, v)


def floor_section(repeats: int, only: list[str] | None) -> None:
    n = 16384
    q, k, v = (torch.randn(B, H, n, D) for _ in range(3))
    peak = matmul_peak(repeats)
    print(f"matmul peak {peak:.1f} GFLOP/s (load {load()})")
    local_keys = local_entries(n, LocalWindow.resolve(look_back=384, look_ahead=384))
    floors = {"local": 4 * D * local_keys * B * H, "dilated": 4 * D * dilated_entries(n, SEGMENTS, RATES) * B * H}
    floors["lucidrains local"] = 4 * D * local_entries(n, LocalWindow("blockwise", 256, 0, 0, 256, None)) * B * H
    floors["torchscale dilated (emulated)"] = floors["dilated"]

    def local(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return local_attention(q, k, v, look_back=384, look_ahead=384)

    cases: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {"local": local, "dilated": dilated_attention}
    peer = lucidrains_local()
    if peer is not None:
        cases["lucidrains local"] = peer
    cases["torchscale dilated (emulated)"] = torchscale_dilated
    cases = {name: fn for name, fn in cases.items() if only is None or name.split()[0] in only}
    print("| case | pass | ms | floor ms | x floor | GFLOP/s | load |\n|---|---|---:|---:|---:|---:|---:|")
    for name, fn in cases.items():
        for label, make, factor in (("fwd", fwd, 1.0), ("fwd+bwd", train, 1.0 + BACKWARD)):
            variants = [("", True)] + ([(" without fast paths", False)] if name in ("local", "dilated") else [])
            for suffix, enabled in variants:
                with fast_paths(enabled):
                    seconds = timed(make(fn, q, k, v), repeats)
                flops = floors[name] * factor
                floor_ms = flops / peak / 1e6
                print(
                    f"| {name}{suffix} | {label} | {seconds * 1e3:.0f} | {floor_ms:.0f} "
                    f"| {seconds * 1e3 / floor_ms:.2f} | {flops / seconds / 1e9:.1f} | {load()} |",
                    flush=True,
                )


def crossover_section(repeats: int, lengths: list[int]) -> None:
    from attnzoo.functional import softmax_attention

    print(
        "| N | softmax fwd+bwd ms | local ms | local / softmax | local path | dilated ms | dilated / softmax "
        "| dilated path | load |\n|---:|---:|---:|---:|---|---:|---:|---|---:|"
    )
    for n in lengths:
        q, k, v = (torch.randn(B, H, n, D) for _ in range(3))
        soft = timed(train(softmax_attention, q, k, v), repeats)
        local = timed(train(lambda q, k, v: local_attention(q, k, v, window_size=256), q, k, v), repeats)
        dil = timed(train(dilated_attention, q, k, v), repeats)
        local_path = "dense" if prefer_dense([sliding_window(n, 256, 256)], B, False, 4) else "sparse"
        branches = [dilated_segments(n, s, r, head_offsets(H, r)) for s, r in zip(SEGMENTS, RATES, strict=True)]
        dil_path = "dense" if prefer_dense(branches, B, False, 4) else "sparse"
        print(
            f"| {n} | {soft * 1e3:.1f} | {local * 1e3:.1f} | {local / soft:.2f} | {local_path} | {dil * 1e3:.1f} "
            f"| {dil / soft:.2f} | {dil_path} | {load()} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("floor", "crossover"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--cases", nargs="+", help="floor: only these (local, dilated, lucidrains, torchscale)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread, process CPU time (robust when other jobs share the cores; the peak is measured the same way)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load()}")
    if args.section == "floor":
        floor_section(args.repeats, args.cases)
    else:
        crossover_section(args.repeats, args.lengths)


if __name__ == "__main__":
    main()
