"""Peak memory of a run: the CUDA allocator's peak, or the process's high-water mark on CPU."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

__all__ = ["peak_memory", "reset_peak_memory"]


def reset_peak_memory(device: torch.device) -> None:
    """Start peak-memory accounting afresh (CUDA allocator; on Linux the process VmHWM via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB since :func:`reset_peak_memory`, and how it was measured."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024, "process VmHWM"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"
