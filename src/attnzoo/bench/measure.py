"""Timing, peak memory and the machine's matmul peak, on CPU and CUDA.

Time (:func:`measure_time`): the first call is timed on its own (it holds any compilation: ``compile_ms``
in the records is that call minus the median), then ``warmup`` more calls, then ``repeats`` timed blocks
of ``number`` calls each, ``number`` chosen so one block lasts at least ``min_block_s`` (calls of a few
microseconds are not dominated by timer overhead). On CPU each block is timed with ``time.perf_counter``,
what ``torch.utils.benchmark.Timer`` uses there too; the Timer itself is not used because its ``timeit``
runs ``max(number // 100, 2)`` untimed calls before every block (a test counts them), which would triple
the sweep's time for the 8-second cases at N = 16k, and its default of one thread is not what users run.
On CUDA each block is bracketed by CUDA events on the current stream, so host overhead between launches
is not counted as idle GPU time. Reported: median, inter-quartile range and minimum of the block means.

Memory (:func:`measure_peak_memory`): on CUDA the peak of ``torch.cuda.max_memory_allocated`` above the
memory held before the call. On CPU (Linux, glibc) the highest resident set seen by a thread polling
``/proc/self/statm`` every 0.2 ms, above the resident set before the call, after ``malloc_trim`` has
returned free heap pages and with glibc told to ``mmap`` every block over 64 KiB for the duration, so
each tensor is fresh memory that counts when made and stops counting when freed. (The kernel's
``VmHWM`` misses short peaks: its per-thread counters are folded in lazily.) This is the *mmap regime*:
every contender is measured under it, whatever glibc would do by default (outside measurement glibc maps
blocks over its dynamic threshold, at most 32 MiB, afresh on every call; timings run under that default
regime). Blocks recycled inside the heap and peaks shorter than the polling interval are not seen.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "TIME_REGIME",
    "Timing",
    "matmul_peak",
    "measure_peak_memory",
    "measure_time",
    "memory_method",
    "set_time_regime",
]

MEMORY_REGIME = "glibc mmap threshold 64 KiB during measurement (every block over 64 KiB mapped and unmapped)"
"""The allocator regime every CPU memory number is measured under (stored in each record)."""

TIME_REGIME = "glibc mmap threshold fixed at 32 MiB (blocks of 32 MiB and more mapped afresh on every call)"
"""The allocator regime every CPU time is measured under: glibc's dynamic threshold at its ceiling, fixed."""


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, inter-quartile range and minimum over ``repeats`` blocks of ``number`` calls;
    ``first`` is the first call alone (compilation included)."""

    median: float
    iqr: float
    minimum: float
    first: float
    repeats: int
    number: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _block_cpu(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def _block_cuda(fn: Callable[[], object], number: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(number):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / number


def measure_time(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_block_s: float = 0.01,
) -> Timing:
    """Time ``fn()`` (see the module docstring); ``repeats >= 1`` blocks after one first call and ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    first = _once(fn, device)
    estimate = first
    for _ in range(warmup):
        estimate = _once(fn, device)
    number = max(1, min(1000, math.ceil(min_block_s / max(estimate, 1e-7))))
    block = _block_cuda if device.type == "cuda" else _block_cpu
    times = [block(fn, number) for _ in range(repeats)]
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[2] - quartiles[0], min(times), first, repeats, number)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """The machine's measured matmul throughput in FLOP/s: best of square ``n x n @ n x n`` products.

    Each size runs one untimed call, then three timed blocks (``2 n^3`` FLOPs a product); the best rate
    over sizes and blocks is returned: the floor the benchmark's "x of floor" compares against.
    """
    best = 0.0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for n in sizes:
        a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
        timing = measure_time(lambda a=a, b=b: a @ b, device, repeats=3, warmup=0, min_block_s=0.02)
        best = max(best, 2.0 * n**3 / timing.minimum)
    return best


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_method(device: torch.device) -> str:
    """How :func:`measure_peak_memory` measures on ``device`` (recorded with every result)."""
    if device.type == "cuda":
        return "cuda.max_memory_allocated (caching allocator)"
    if _resident_bytes() is None:
        return "unavailable"
    return f"polled RSS, {MEMORY_REGIME}" if _glibc() is not None else "polled RSS (not glibc: default allocator)"


def measure_peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra bytes needed while ``fn()`` runs, or ``None`` where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)  # hand free heap pages back, so that reusing them shows up as growth
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    before = _resident_bytes()
    if before is None:
        return None
    highest = [before]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            highest[0] = max(highest[0], _resident_bytes() or 0)
            time.sleep(0.0002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_CEILING)  # back to the time regime
    return max(max(highest[0], _resident_bytes() or 0) - before, 0)


_M_MMAP_THRESHOLD = -3
_MMAP_CEILING = 32 * 2**20  # glibc's ceiling for its dynamic threshold


def set_time_regime() -> str:
    """Fix glibc's mmap threshold at 32 MiB for this process (see :data:`TIME_REGIME`); returns the regime.

    Without this the threshold drifts up from 128 KiB as blocks are freed, so the first measurements in a
    process would run under a different regime than later ones.
    """
    libc = _glibc()
    if libc is None:
        return "default allocator (not glibc)"
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_CEILING)
    return TIME_REGIME


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
