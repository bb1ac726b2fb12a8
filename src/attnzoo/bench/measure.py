"""Timing and peak-memory measurement on CPU and CUDA.

Time: median of ``repeats`` runs after ``warmup`` runs (CUDA synchronised). Memory: on CUDA the
peak of ``torch.cuda.max_memory_allocated`` above the memory held before the call; on CPU (Linux,
glibc) the rise of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
above its resident set before the call, with glibc told to ``mmap`` every block over 64 KiB for the
duration, so that each tensor is fresh memory that counts and is returned when freed. Smaller blocks
recycled inside the heap are not seen (a few MiB at most).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
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


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_method(device: torch.device) -> str:
    """How :func:`measure_peak_memory` measures on ``device`` (recorded with every result)."""
    if device.type == "cuda":
        return "cuda.max_memory_allocated"
    return "VmHWM-VmRSS (mmap threshold 64 KiB)" if _proc_status("VmHWM") is not None else "unavailable"


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
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    try:
        before = _proc_status("VmRSS")
        fn()
        peak = _proc_status("VmHWM")
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's own ceiling for its dynamic threshold
    return None if before is None or peak is None else max(peak - before, 0)


_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
