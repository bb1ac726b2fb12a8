"""Run benchmark tasks in worker processes, so a crash, a hang or an out-of-memory kill ends one case only.

Tasks come in :class:`Group` s (one mechanism at one dtype/shape/causal setting, lengths ascending). A
``fresh`` group (every timed mechanism) gets a worker process of its own (:mod:`attnzoo.bench.worker`),
so contenders never share allocator state; other groups (error cases, matmul peaks) share one worker,
which saves the 2-3 s a worker takes to import torch.
A task that does not answer within the time budget is recorded as ``timeout`` and its worker killed;
a worker that dies is recorded as ``crashed`` (``out-of-memory`` when the kernel killed it); either way
a new worker takes the group's remaining tasks. Once a case of a group exceeds a budget (time, memory,
or failed for lack of memory), the group's larger cases are recorded as ``skipped``, not run.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from attnzoo.bench.run import failure_records

__all__ = ["Group", "Worker", "run_groups"]

EXCEEDED = ("timeout", "out-of-memory", "over-budget", "crashed")
"""Statuses after which a group's larger cases are skipped."""


@dataclass
class Group:
    """Tasks run in order, in a worker of their own when ``fresh`` (under ``python`` when given)."""

    tasks: list[dict[str, Any]]
    fresh: bool = True
    python: str | None = None


class Worker:
    """One ``python -m attnzoo.bench.worker`` process."""

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        src = str(Path(__file__).resolve().parents[2])
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, full_env.get("PYTHONPATH")]))
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [python, "-m", "attnzoo.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
        )
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline().strip() == b'{"ready": true}'  # False: it died importing

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-600:].strip()

    def run(self, task: dict[str, Any], timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """Send ``task``; returns ``(records, alive)``; ``alive`` is False after a timeout or crash."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self.ready:
            return self._died(task), False
        try:
            self.proc.stdin.write((json.dumps(task) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(task), False
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            return failure_records(task, "timeout", f"no answer within the {timeout:g} s time budget"), False
        line = self.proc.stdout.readline()
        if not line:
            return self._died(task), False
        return json.loads(line), True

    def _died(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        code = self.proc.wait()
        killed = code == -signal.SIGKILL
        status = "out-of-memory" if killed else "crashed"
        reason = f"worker exited with {code}" + (" (SIGKILL: the kernel's OOM killer?)" if killed else "")
        return failure_records(task, status, f"{reason}: {self._stderr_tail()}")

    def close(self) -> None:
        """Stop the worker (kill it if it does not exit on end of input)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def _exceeded(records: list[dict[str, Any]], memory_budget_mib: float | None) -> str | None:
    """Mark records over the memory budget; returns why the group must stop, or None."""
    why = None
    for rec in records:
        mem = [rec.get(key) for key in ("mem_mib", "attnzoo_mem_mib", "peer_mem_mib")]
        if memory_budget_mib is not None and any(m is not None and m > memory_budget_mib for m in mem):
            rec["status"] = "over-budget"
            rec["reason"] = f"peak memory over the {memory_budget_mib:g} MiB budget"
        if rec.get("status") in EXCEEDED:
            why = f"{rec['status']} at N={rec.get('seq_len')}"
    return why


def run_groups(
    groups: Iterable[Group],
    *,
    timeout: float,
    memory_budget_mib: float | None = None,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every task of every group (see the module docstring); returns all records in order.

    ``on_records`` is called with each task's records as they arrive (progress output).
    """
    if memory_budget_mib is not None:
        env = {**(env or {}), "ATTNZOO_BENCH_MEMORY_MIB": str(memory_budget_mib)}
    out: list[dict[str, Any]] = []
    shared: Worker | None = None
    for group in groups:
        worker = None if group.fresh else shared
        stop: str | None = None
        for task in group.tasks:
            if stop is not None:
                records = failure_records(task, "skipped", f"budget exceeded by a shorter case ({stop})")
            else:
                worker = worker or Worker(group.python or python, env)
                started = time.perf_counter()
                records, alive = worker.run(task, timeout)
                for rec in records:
                    rec.setdefault("wall_s", time.perf_counter() - started)
                if not alive:
                    worker.close()
                    worker = None
                stop = _exceeded(records, memory_budget_mib)
            out.extend(records)
            if on_records is not None:
                on_records(records)
        if group.fresh and worker is not None:
            worker.close()
        elif not group.fresh:
            shared = worker
    if shared is not None:
        shared.close()
    return out
