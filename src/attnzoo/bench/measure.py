"""Timing and peak-memory measurement on CPU and CUDA.

Time: median of ``repeats`` runs after ``warmup`` runs (CUDA synchronised). Memory: on CUDA the
peak of ``torch.cuda.max_memory_allocated`` above the memory held before the call; on CPU (Linux,
glibc) the highest resident set seen by a thread polling ``/proc/self/statm`` every 0.2 ms, above the
resident set before the call, after ``malloc_trim`` has returned free heap pages and with glibc told
to ``mmap`` every block over 64 KiB for the duration,
so that each tensor is fresh memory that counts and is returned when freed. (The kernel's own
high-water mark, ``VmHWM``, misses short peaks: its per-thread counters are folded in lazily.)
Blocks recycled inside the heap and peaks shorter than the polling interval are not seen.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch

__all__ = ["measure_peak_memory", "measure_time", "memory_method"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_time(fn: Callable[[], object], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_method(device: torch.device) -> str:
    """How :func:`measure_peak_memory` measures on ``device`` (recorded with every result)."""
    if device.type == "cuda":
        return "cuda.max_memory_allocated"
    return "polled RSS (mmap threshold 64 KiB)" if _resident_bytes() is not None else "unavailable"


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
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's own ceiling for its dynamic threshold
    return max(max(highest[0], _resident_bytes() or 0) - before, 0)


_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
