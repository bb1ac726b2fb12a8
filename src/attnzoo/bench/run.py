"""Benchmark cases: one mechanism's attention core at one length and shape, forward and forward+backward.

The core (``module.attend(q, k, v, mask)``) is measured, not the projections, so the numbers compare
attention mechanisms with each other and with SDPA (``softmax``), as FlashAttention's and LongNet's
benchmarks do; ``module=True`` (``--module``) times the whole layer ``module(x)`` instead, projections included.
Each case runs one untimed forward under :func:`attnzoo.sparse.trace.trace_engine` first: its record names the
engine paths that ran (``executor``) and, for exact pattern mechanisms, counts the score entries they computed.
Every pass gives one flat record (see :func:`run_case`); a pass that cannot run (a non-causal mechanism asked
for ``causal``, no CPU backward) is recorded as ``unsupported``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import attnzoo
from attnzoo.bench.measure import measure_peak_memory, measure_time, memory_method
from attnzoo.registry import make_options
from attnzoo.sparse.trace import trace_engine

__all__ = [
    "FWDBWD_FLOP_FACTOR",
    "BenchCase",
    "core_widths",
    "environment",
    "failure_records",
    "failure_status",
    "make_qkv",
    "run_case",
]

FWDBWD_FLOP_FACTOR = 3.0
"""Forward+backward FLOPs as a multiple of forward FLOPs: each forward matmul ``C = A B`` has two backward
matmuls of the same size (``dA = dC B^T``, ``dB = A^T dC``); recomputation is not counted, so the floor is
a lower bound (FlashAttention's benchmark counts 3.5x, including the recomputed ``Q K^T``)."""

MIB = 2.0**20


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
    passes: tuple[str, ...] = ("fwd", "fwdbwd")
    memory: bool = True
    compile: bool = False
    module: bool = False
    block_s: float = 0.01

    def key(self) -> dict[str, Any]:
        """The fields that identify a case in records (and across runs, for ``--compare``); ``module`` only when
        set, so that core records of every version share their keys."""
        return {
            "mechanism": self.mechanism,
            "seq_len": self.seq_len,
            "batch": self.batch,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "causal": self.causal,
            "device": self.device,
            "compile": self.compile,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
            **({"module": True} if self.module else {}),
        }


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
        env["cuda"] = torch.version.cuda
    return env


def core_widths(module: torch.nn.Module, dim: int) -> tuple[int, int, int]:
    """Per-head widths of the ``q, k, v`` the module's own ``project`` makes (``d, d, d`` for most; a
    mechanism whose core reads other inputs, e.g. ``psf``'s chord factors, says so through ``project``)."""
    with torch.no_grad():
        q, k, v = module.project(torch.zeros(1, 1, dim))  # type: ignore[operator]
    return q.shape[-1], k.shape[-1], v.shape[-1]


def make_qkv(
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    widths: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded standard-normal ``q, k, v`` (requiring grad) of ``shape = (B, H, N, d)``, or of per-head
    ``widths`` when given, and an output gradient shaped like ``v``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, h, n, d = shape

    def draw(width: int, grad: bool = True) -> torch.Tensor:
        t = torch.randn(b, h, n, width, generator=gen).to(device=device, dtype=dtype)
        return t.requires_grad_() if grad else t

    wq, wk, wv = widths or (d, d, d)
    return draw(wq), draw(wk), draw(wv), draw(wv, grad=False)


def failure_status(err: BaseException) -> str:
    """``out-of-memory`` for allocation failures, ``unsupported`` for ``NotImplementedError``, else ``failed``."""
    text = str(err).lower()
    if isinstance(err, MemoryError) or "out of memory" in text or "can't allocate" in text:
        return "out-of-memory"
    return "unsupported" if isinstance(err, NotImplementedError) else "failed"


def failure_records(task: dict[str, Any], status: str, reason: str) -> list[dict[str, Any]]:
    """The records of a task that gave none: one per pass of a task with ``passes``, else one."""
    base = {k: v for k, v in task.items() if k != "passes"}
    rec = {**base, "status": status, "reason": reason[:800]}
    return [{**rec, "pass": name} for name in task["passes"]] if "passes" in task else [rec]


def pass_fns(
    attend: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], grad: torch.Tensor
) -> dict[str, Callable[[], object]]:
    """``{"fwd": forward under no_grad, "fwdbwd": forward then backward with ``grad``}`` of ``attend()``."""

    def forward() -> object:
        with torch.no_grad():
            return attend()

    def forward_backward() -> None:
        torch.autograd.backward(attend(), grad)
        for t in inputs:
            t.grad = None

    return {"fwd": forward, "fwdbwd": forward_backward}


def _layer_input(case: BenchCase, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``x (B, N, H * d)`` (requiring grad) for the whole layer, and its output gradient."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (case.batch, case.seq_len, case.heads * case.head_dim)
    x, grad = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    return x.requires_grad_(), grad


def timed_record(
    fn: Callable[[], object], device: torch.device, repeats: int, memory: bool, block_s: float = 0.01
) -> dict[str, Any]:
    """Time (and optionally measure the peak memory of) one pass in ``repeats`` blocks of at least ``block_s``
    seconds: the timing fields of a record."""
    t = measure_time(fn, device, repeats=repeats, min_block_s=block_s)
    rec: dict[str, Any] = {
        "ms": 1e3 * t.median,
        "iqr_ms": 1e3 * t.iqr,
        "min_ms": 1e3 * t.minimum,
        "first_ms": 1e3 * t.first,
        "repeats": t.repeats,
        "number": t.number,
    }
    if memory:
        peak = measure_peak_memory(fn, device)
        rec["mem_mib"] = None if peak is None else peak / MIB
    rec["memory_method"] = memory_method(device)
    return rec


def _unsupported(case: BenchCase, name: str) -> str | None:
    caps = attnzoo.get_spec(case.mechanism).capabilities
    if case.causal and not caps.causal:
        return "not causal"
    if name == "fwdbwd" and case.device == "cpu" and not caps.cpu_backward:
        return "no CPU backward"
    return None


def run_case(case: BenchCase) -> list[dict[str, Any]]:
    """Measure ``case``: one record per pass (times in ms, memory in MiB).

    Keys: :meth:`BenchCase.key`, ``kind="time"``, ``pass``, ``status`` (``ok``, ``unsupported``,
    ``failed``, ``out-of-memory``), ``ms``/``iqr_ms``/``min_ms`` (median, spread, best), ``first_ms``,
    ``compile_ms`` (compiled paths: first call minus median), ``mem_mib``, ``memory_method``, ``executor`` (the
    engine paths that ran, ``+``-joined, e.g. ``gather+band``; ``dense-kernel`` where the engine did not run),
    ``flops`` (all batches and heads: the mechanism's analytic ``flops`` hook, the allowed work; for exact pattern
    mechanisms at most 4 d per score entry the engine computed; ``None`` without either and for whole layers).
    """
    spec = attnzoo.get_spec(case.mechanism)
    base = {"kind": "time", **case.key()}
    records = []
    todo = []
    for name in case.passes:
        reason = _unsupported(case, name)
        if reason:
            records.append({**base, "pass": name, "status": "unsupported", "reason": reason})
        else:
            todo.append(name)
    if not todo:
        return records
    device = torch.device(case.device)
    dtype = getattr(torch, case.dtype)
    module = attnzoo.build(case.mechanism, case.heads * case.head_dim, case.heads, causal=case.causal, **case.options)
    module = module.to(device=device, dtype=dtype)
    widths = core_widths(module, case.heads * case.head_dim)
    q, k, v, grad = make_qkv((case.batch, case.heads, case.seq_len, case.head_dim), dtype, device, widths=widths)
    inputs: tuple[torch.Tensor, ...] = (q, k, v)
    if case.module:
        x, grad = _layer_input(case, dtype, device)
        inputs = (x, *module.parameters())
        call = torch.compile(module) if case.compile else module
        fns = pass_fns(lambda: call(x), inputs, grad)
    else:
        attend = torch.compile(module.attend) if case.compile else module.attend
        fns = pass_fns(lambda: attend(q, k, v, None), inputs, grad)
    try:
        with torch.no_grad(), trace_engine() as trace:  # untimed: what runs, and the engine's work
            module(_layer_input(case, dtype, device)[0]) if case.module else module.attend(q, k, v, None)
    except (RuntimeError, MemoryError, ValueError, NotImplementedError) as err:
        reason = f"{type(err).__name__}: {err}"[:500]
        return records + [{**base, "pass": name, "status": failure_status(err), "reason": reason} for name in todo]
    executor = trace.label() or "dense-kernel"
    flops = None
    if spec.flops is not None:  # the allowed work
        opts = make_options(spec.options, case.options, context=case.mechanism)
        flops = float(spec.flops(case.seq_len, case.head_dim, opts, case.causal)) * case.batch * case.heads
    if spec.capabilities.pattern and spec.capabilities.exact and trace.score_entries:
        # all of its work is the engine's kernel calls: q k^T and p v, 2 d flops per computed entry each; a dense
        # call over a union computes each pair once where the allowed count has multiplicities
        computed = 4.0 * case.head_dim * trace.score_entries
        flops = computed if flops is None else min(flops, computed)
    if case.module:
        flops = None  # the projections' work is not counted: no floor for whole layers
    for name in todo:
        rec: dict[str, Any] = {**base, "pass": name, "executor": executor}
        try:
            rec.update(timed_record(fns[name], device, case.repeats, case.memory, case.block_s))
        except (RuntimeError, MemoryError, ValueError, NotImplementedError) as err:
            records.append({**rec, "status": failure_status(err), "reason": f"{type(err).__name__}: {err}"[:500]})
            continue
        if case.compile or "flex" in executor:
            rec["compile_ms"] = max(rec["first_ms"] - rec["ms"], 0.0)
        rec["flops"] = None if flops is None else flops * (FWDBWD_FLOP_FACTOR if name == "fwdbwd" else 1.0)
        records.append({**rec, "status": "ok"})
    return records
