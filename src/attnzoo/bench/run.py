"""Benchmark cases: one mechanism's attention core at one length, forward and forward+backward.

The core (``module.attend(q, k, v, mask)``) is measured, not the projections, so the numbers
compare attention mechanisms with each other and with SDPA (``softmax``), as FlashAttention's
and LongNet's benchmarks do.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

import attnzoo
from attnzoo.bench.measure import measure_peak_memory, measure_time, memory_method
from attnzoo.sparse import pick_executor

__all__ = ["BENCH_OPTIONS", "BenchCase", "environment", "run_case"]

BENCH_OPTIONS: dict[str, dict[str, Any]] = {
    "local": {"window_size": 256},
    "dilated": {"segment_lengths": (2048, 4096, 8192), "dilation_rates": (1, 2, 4)},
}
"""Default options per mechanism in benchmarks (the issue's reference settings); ``--option`` overrides."""


@dataclass(frozen=True)
class BenchCase:
    """One measurement: mechanism, shape, dtype, passes."""

    mechanism: str
    seq_len: int
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"
    causal: bool = False
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    repeats: int = 3
    backward: bool = True
    memory: bool = True


def environment() -> dict[str, Any]:
    """Machine and library facts recorded with every result."""
    env = {
        "torch": torch.__version__,
        "attnzoo": attnzoo.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def run_case(case: BenchCase) -> dict[str, Any]:
    """Measure ``case``; returns a flat record (times in ms, memory in MiB).

    Keys: the case fields, ``fwd_ms``, ``fwdbwd_ms``, ``fwd_mem_mib``, ``fwdbwd_mem_mib``,
    ``memory_method``, ``executor``.
    """
    device = torch.device(case.device)
    dtype = getattr(torch, case.dtype)
    options = {**BENCH_OPTIONS.get(case.mechanism, {}), **case.options}
    module = attnzoo.build(case.mechanism, case.heads * case.head_dim, case.heads, causal=case.causal, **options)
    module = module.to(device=device, dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=gen, dtype=dtype).to(device)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return module.attend(q, k, v, None)

    def forward_backward() -> None:
        out = module.attend(q, k, v, None)
        torch.autograd.backward(out, grad)
        for t in (q, k, v):
            t.grad = None

    record: dict[str, Any] = dataclasses.asdict(case)
    record["fwd_ms"] = 1e3 * measure_time(forward, device, repeats=case.repeats)
    record["fwdbwd_ms"] = 1e3 * measure_time(forward_backward, device, repeats=case.repeats) if case.backward else None
    mib = 2.0**20
    if case.memory:
        fwd_mem = measure_peak_memory(forward, device)
        bwd_mem = measure_peak_memory(forward_backward, device) if case.backward else None
        record["fwd_mem_mib"] = None if fwd_mem is None else fwd_mem / mib
        record["fwdbwd_mem_mib"] = None if bwd_mem is None else bwd_mem / mib
    record["memory_method"] = memory_method(device)
    pattern = attnzoo.get_spec(case.mechanism).capabilities.pattern
    record["executor"] = pick_executor(q, options.get("executor", "auto")) if pattern else "dense-kernel"
    record["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return record
