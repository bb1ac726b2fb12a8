"""Busy background processes beside a benchmark (``attnzoo bench --contention K``): shared CPU cores.

:class:`Contention` is a context manager that starts ``K`` CPU-bound processes, waits until each one
is working, and on leaving (normally, on an exception or on Ctrl-C) terminates and reaps every one of
them. Each process runs one kind of work (:data:`CONTENTION_KINDS`) in a loop on one thread
(``OMP_NUM_THREADS=1``), the way a data-loader worker or a second one-thread training run occupies a core:

- ``train``: a training-like step, a 256-512-256 MLP's forward, backward and AdamW update on a fresh
  random batch of 64 (allocations, small GEMMs, element-wise kernels);
- ``matmul``: a 512 x 512 fp32 matmul into a fixed output (compute-bound, cache-resident);
- ``spin``: a pure-Python integer loop (holds a core without touching torch, caches or memory bandwidth).

No orphan is ever left: the processes run in a session of their own (a Ctrl-C in the terminal reaches
the benchmark only, whose ``with`` block then stops them), and on Linux each one asks the kernel to send
it SIGTERM when the benchmark process dies (``PR_SET_PDEATHSIG``), which covers a benchmark killed by
SIGKILL. Run as a script (``python contention.py KIND PARENT_PID``) it is one busy process; it prints
``ready`` once its work is set up and then loops until terminated.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

__all__ = [
    "CONTENTION_KINDS",
    "DEFAULT_KIND",
    "Contention",
    "busy_step",
    "contention_count",
    "load_key",
    "load_label",
    "load_suffix",
]

CONTENTION_KINDS = ("train", "matmul", "spin")
"""The kinds of busy work (see the module docstring)."""
DEFAULT_KIND = "train"
"""What ``--contention`` runs unless ``--contention-kind`` says otherwise."""
READY_TIMEOUT_S = 120.0
"""Seconds a busy process may take to import torch and set up its work on a loaded machine."""
STOP_TIMEOUT_S = 5.0
"""Seconds a busy process is given to exit after SIGTERM before it is killed."""
PR_SET_PDEATHSIG = 1


def contention_count(text: str) -> int:
    """argparse ``type=`` for ``--contention``: a whole number >= 0 (the error names the text)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of busy processes >= 0, got {text!r}")
    return value


def load_key(rec: dict[str, Any]) -> tuple[int, str | None, int | None]:
    """``(K, kind, threads)`` of a benchmark record: its busy processes, their kind and the worker's
    ``--threads``. ``(0, None, None)`` for a quiet run at the default thread count, also for records
    written before these fields existed; the kind of a quiet run is ``None`` whatever was asked."""
    count = int(rec.get("contention") or 0)
    return count, rec.get("contention_kind") if count else None, rec.get("threads")


def load_label(count: int, kind: str | None, threads: int | None = None) -> str:
    """How a report names a load: ``"2 busy train processes"`` (none: nothing), then ``"1 thread"`` when the
    benchmark's thread count was set, joined by a comma; ``"quiet"`` when there is neither."""
    parts = [f"{count} busy {kind} process{'es' if count > 1 else ''}"] if count else []
    parts += [f"{threads} thread{'s' if threads > 1 else ''}"] if threads is not None else []
    return ", ".join(parts) or "quiet"


def load_suffix(count: int, kind: str | None, threads: int | None) -> str:
    """``", <load_label>"`` for a run under a load, ``""`` for a quiet run at the default threads (so the
    names of settings, tables and plot files of quiet runs stay as they were before loads existed)."""
    return "" if (count, threads) == (0, None) else f", {load_label(count, kind, threads)}"


def busy_step(kind: str) -> Callable[[], None]:
    """One unit of ``kind``'s work (imports torch for ``train`` and ``matmul``); the busy loop calls it forever.

    Raises:
        ValueError: ``kind`` is not one of :data:`CONTENTION_KINDS`.
    """
    if kind == "spin":

        def spin() -> None:
            total = 0
            for i in range(100_000):
                total += i * i

        return spin
    if kind == "matmul":
        import torch

        a, b, c = torch.randn(512, 512), torch.randn(512, 512), torch.empty(512, 512)

        def matmul() -> None:
            torch.mm(a, b, out=c)

        return matmul
    if kind == "train":
        import torch

        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train() -> None:
            x = torch.randn(64, 256)
            loss = (model(x) - x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return train
    raise ValueError(f"contention kind {kind!r} is not one of {', '.join(CONTENTION_KINDS)}")


class Contention:
    """``with Contention(count, kind):`` runs ``count`` busy ``kind`` processes for the block's duration.

    ``pids`` lists them while they run. Leaving the block terminates (SIGTERM, then SIGKILL after
    :data:`STOP_TIMEOUT_S`) and reaps every one, whatever ended the block.

    Raises:
        ValueError: ``count`` is not a whole number >= 0, or ``kind`` is unknown (on construction).
        RuntimeError: a busy process died or did not get ready within :data:`READY_TIMEOUT_S` (on entry,
            after stopping the others).
    """

    def __init__(self, count: int, kind: str = DEFAULT_KIND, python: str = sys.executable) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"contention: the number of busy processes must be a whole number >= 0, got {count!r}")
        if kind not in CONTENTION_KINDS:
            raise ValueError(f"contention kind {kind!r} is not one of {', '.join(CONTENTION_KINDS)}")
        self.count, self.kind, self.python = count, kind, python
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the busy processes started (empty outside the ``with`` block)."""
        return [proc.pid for proc, _ in self._procs]

    def fields(self) -> dict[str, Any]:
        """What every record of a run under this load carries: ``contention`` (K) and ``contention_kind``
        (``None`` when K = 0)."""
        return {"contention": self.count, "contention_kind": self.kind if self.count else None}

    def __enter__(self) -> Contention:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            for _ in range(self.count):
                log = tempfile.TemporaryFile()
                proc = subprocess.Popen(
                    [self.python, str(Path(__file__).resolve()), self.kind, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
                self._procs.append((proc, log))
            self._wait_ready(time.monotonic() + READY_TIMEOUT_S)
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Block until every process has printed ``ready``.

        Raises:
            RuntimeError: one exited or stayed silent past ``deadline``.
        """
        for proc, log in self._procs:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                answered = sel.select(max(deadline - time.monotonic(), 0.0))
            line = proc.stdout.readline() if answered else b""
            if line.strip() != b"ready":
                why = "was not ready" if not answered else f"exited with {proc.wait()}"
                raise RuntimeError(
                    f"busy {self.kind} process {proc.pid} {why} within {READY_TIMEOUT_S:g} s: {_tail(log)}"
                )

    def check(self) -> None:
        """Raises RuntimeError when a busy process has exited while the benchmark ran (its records
        would not have been measured under ``count`` busy processes)."""
        gone = [f"{p.pid} (exit code {p.returncode}: {_tail(log)})" for p, log in self._procs if p.poll() is not None]
        if gone:
            raise RuntimeError(
                f"{len(gone)} of {self.count} busy {self.kind} processes exited during the benchmark: {', '.join(gone)}"
            )

    def _stop(self) -> None:
        """Terminate, then reap (killing any that lingers), every started process; close their pipes."""
        for proc, _ in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, log in self._procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            log.close()
        self._procs = []

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-400:].strip() or "no output"


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when ``parent`` dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: list[str]) -> NoReturn:
    """One busy process: ``KIND PARENT_PID``; prints ``ready``, then works until terminated."""
    kind, parent = argv
    _die_with_parent(int(parent))
    if kind != "spin":
        import torch

        torch.set_num_threads(1)
    step = busy_step(kind)
    step()
    print("ready", flush=True)
    while True:
        step()


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # run as a script: the bench package's files must not shadow what torch imports
    main(sys.argv[1:])
