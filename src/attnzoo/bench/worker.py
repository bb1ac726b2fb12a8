"""The benchmark worker process: ``python -m attnzoo.bench.worker`` reads one JSON task per line on stdin
and answers each with one JSON line (a list of records) on stdout.

Tasks (``kind``): ``time`` (a :class:`BenchCase`), ``error`` (:func:`error_record`), ``peer`` (a public
implementation and its attnzoo mechanism on the same q, k, v) and ``peak`` (the matmul peak). Modules
named in the ``ATTNZOO_BENCH_IMPORTS`` environment variable (comma-separated) are imported first, so
mechanisms registered outside attnzoo can be benchmarked. On CUDA ``ATTNZOO_BENCH_MEMORY_MIB`` caps the
process's allocations (an allocation past it is an ``out-of-memory`` record). ``ATTNZOO_BENCH_THREADS``
(``attnzoo bench --threads T``) sets ``torch.set_num_threads``; every record then carries ``threads``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import torch

__all__ = ["main", "run_task"]


def _peer_records(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Time a peer and its attnzoo mechanism on the same inputs: one record per pass."""
    import attnzoo
    from attnzoo.bench.accuracy import relative_error
    from attnzoo.bench.peers import PEERS, build_peer
    from attnzoo.bench.run import failure_status, make_qkv, pass_fns, timed_record
    from attnzoo.registry import make_options

    peer = next(p for p in PEERS if p.name == task["peer"])
    device, dtype = torch.device(task["device"]), getattr(torch, task["dtype"])
    shape = (task["batch"], task["heads"], task["seq_len"], task["head_dim"])
    base = {"kind": "peer", "mechanism": peer.mechanism, "differs": peer.differs, **task}
    q, k, v, grad = make_qkv(shape, dtype, device)
    opts = make_options(attnzoo.get_spec(peer.mechanism).options, task["options"], context=peer.mechanism)
    try:
        core, settings = build_peer(peer, q, k, v, opts, task["causal"])
    except ModuleNotFoundError as err:
        return [{**base, "pass": p, "status": "missing", "reason": str(err)} for p in task["passes"]]
    module = attnzoo.build(peer.mechanism, shape[1] * shape[3], shape[1], causal=task["causal"], options=opts)
    module = module.to(device=device, dtype=dtype)
    contenders = {
        "peer": pass_fns(lambda: core(q, k, v), (q, k, v), grad),
        "attnzoo": pass_fns(lambda: module.attend(q, k, v, None), (q, k, v), grad),
    }
    diff = None
    if peer.same_output:
        with torch.no_grad():
            diff = relative_error(core(q, k, v), module.attend(q, k, v, None))
    records = []
    for name in task["passes"]:
        rec = {**base, "pass": name, "peer_settings": settings, "out_rel_diff": diff, "status": "ok"}
        for who, fns in contenders.items():
            try:
                rec.update(
                    {f"{who}_{key}": val for key, val in timed_record(fns[name], device, task["repeats"], True).items()}
                )
            except (RuntimeError, ValueError, NotImplementedError, AssertionError, MemoryError) as err:
                rec.update({"status": f"{who} {failure_status(err)}", "reason": f"{type(err).__name__}: {err}"[:300]})
                break
        if rec["status"] == "ok":
            rec["ratio"] = rec["attnzoo_ms"] / rec["peer_ms"]
        records.append(rec)
    return records


def run_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one task in this process and return its records."""
    from attnzoo.bench.accuracy import error_record
    from attnzoo.bench.measure import matmul_peak
    from attnzoo.bench.run import BenchCase, run_case

    kind = task["kind"]
    if kind == "time":
        fields = {key: val for key, val in task.items() if key != "kind"}
        fields["options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields["options"].items()}
        fields["passes"] = tuple(fields["passes"])
        return run_case(BenchCase(**fields))
    if kind == "error":
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in task["options"].items()}
        return [error_record(task["mechanism"], task["seq_len"], task["dist"], opts)]
    if kind == "peer":
        task = {**task, "options": {k: tuple(v) if isinstance(v, list) else v for k, v in task["options"].items()}}
        return _peer_records(task)
    if kind == "peak":
        device, dtype = torch.device(task["device"]), getattr(torch, task["dtype"])
        return [{**task, "status": "ok", "flops_per_s": matmul_peak(device, dtype)}]
    raise ValueError(f"unknown benchmark task kind {kind!r}")


def main() -> int:
    """Serve tasks from stdin until it closes."""
    from attnzoo.bench.measure import set_time_regime

    for name in filter(None, os.environ.get("ATTNZOO_BENCH_IMPORTS", "").split(",")):
        importlib.import_module(name)
    budget = os.environ.get("ATTNZOO_BENCH_MEMORY_MIB")
    if budget and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(budget) * 2**20 / total))
    regime = set_time_regime()
    threads = os.environ.get("ATTNZOO_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a mechanism prints must not corrupt the answers
    out.write('{"ready": true}\n')  # imports done: the parent starts each task's clock after this
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        try:
            records = run_task(task)
        except Exception as err:  # any failure of one task is that task's record
            from attnzoo.bench.run import failure_records, failure_status

            records = failure_records(task, failure_status(err), f"{type(err).__name__}: {err}")
        for rec in records:
            rec.setdefault("time_regime", regime)
            if threads:
                rec.setdefault("threads", torch.get_num_threads())
        out.write(json.dumps(records, default=str) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
