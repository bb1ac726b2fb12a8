"""The engine's bookkeeping on one thread, its kernels on all of them: block-sparse work on shared CPU cores.

A block-sparse call does a few large kernel calls and many small copies, fills and additions around them
(gathers into slot order, window gradients added back block by block, merges). Each small op above
PyTorch's grain size opens an OpenMP parallel region, which returns only when every thread of the team
has run its share: when the cores are also busy (a training process, data-loader workers), a team thread
that the scheduler has put aside makes the region wait for a whole time slice. Measured on the 2-core
machine under load 4: a 786 KB ``add_`` took 0.025 ms at the median on both one and two threads, but 3.2 ms
on average on two threads (the slow tail) against 0.09 ms on one. So inside :func:`bookkeeping` the
engine's own ops run on one thread, and :func:`kernel_threads` gives each kernel call (fused flash
attention, matmuls) the caller's thread count back; switching costs well under a microsecond.

``torch.set_num_threads`` is process-wide: another Python thread running torch ops during an engine call
also runs them on one thread meanwhile (slower, never wrong).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

__all__ = ["bookkeeping", "kernel_threads", "on_kernel_threads", "one_thread_backward"]

F = TypeVar("F", bound=Callable[..., Any])

_OUTER: ContextVar[int | None] = ContextVar("attnzoo_engine_threads", default=None)


@contextmanager
def bookkeeping(device: torch.device) -> Iterator[None]:
    """Run the block on one intra-op thread when ``device`` is the CPU and more threads are set (nested blocks
    and other devices: unchanged); :func:`kernel_threads` inside it restores the caller's count."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or _OUTER.get() is not None:
        yield
        return
    token = _OUTER.set(threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _OUTER.reset(token)


@contextmanager
def kernel_threads() -> Iterator[None]:
    """Inside :func:`bookkeeping`, run the block (one kernel call) on the caller's thread count; else unchanged."""
    threads = _OUTER.get()
    if threads is None:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def on_kernel_threads(fn: F) -> F:
    """Decorator: ``fn`` (a kernel) runs under :func:`kernel_threads`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kernel_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def one_thread_backward(fn: F) -> F:
    """Decorator for an autograd ``backward(ctx, *grads)``: its bookkeeping under :func:`bookkeeping`, on the
    device of its first saved tensor."""

    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        saved = ctx.saved_tensors
        device = saved[0].device if saved else torch.device("cpu")
        with bookkeeping(device):
            return fn(ctx, *grads)

    return wrapper  # type: ignore[return-value]
