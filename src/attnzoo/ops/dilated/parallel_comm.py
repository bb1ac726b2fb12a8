"""The collectives of sequence-parallel LongNet: the row exchange, the global length, the group in effect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from attnzoo.ops.dilated.parallel_plan import chunk_bounds

__all__ = ["AllToAll", "current_group", "global_length", "sequence_parallel_group", "set_sequence_parallel_group"]

_GROUP: ContextVar[Any] = ContextVar("attnzoo_sequence_parallel_group", default=None)


@contextmanager
def sequence_parallel_group(group: Any) -> Iterator[None]:
    """Within the block, modules with ``sequence_parallel=True`` split sequences over ``group``."""
    token = _GROUP.set(group)
    try:
        yield
    finally:
        _GROUP.reset(token)


def set_sequence_parallel_group(group: Any) -> None:
    """Make ``group`` the sequence-parallel group of this process (training harness: set once)."""
    _GROUP.set(group)


def current_group() -> Any:
    """The sequence-parallel process group in effect (``None`` = the default, whole-world group)."""
    return _GROUP.get()


class AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over rows (dim 0) whose backward is the reverse exchange.

    ``anchor`` passes through unchanged so that every rank's backward reaches this node (and so
    joins the collective) even where its received rows are unused.
    """

    @staticmethod
    def forward(ctx: Any, rows: Tensor, anchor: Tensor, send: tuple[int, ...], recv: tuple[int, ...], group: Any):  # type: ignore[override]
        out = rows.new_empty(sum(recv), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), list(recv), list(send), group=group)
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return out, anchor.view_as(anchor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, grad_anchor: Tensor):  # type: ignore[override]
        back = grad.new_empty(sum(ctx.send), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), list(ctx.send), list(ctx.recv), group=ctx.group)
        return back, grad_anchor, None, None, None


def global_length(n_local: int, group: Any = None, device: torch.device | None = None) -> int:
    """Total sequence length from every rank's chunk length (one tiny all-gather); checks the split.

    Raises:
        ValueError: fewer tokens than processes, or chunk lengths that are not ``torch.tensor_split``
            sizes of their sum.
    """
    world = dist.get_world_size(group)
    mine = torch.tensor([n_local], dtype=torch.long, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    lengths = [int(x) for x in everyone]
    n = sum(lengths)
    expected = [b - a for a, b in chunk_bounds(n, world)]  # raises, naming N and P, when N < P
    if lengths != expected:
        raise ValueError(
            f"sequence-parallel chunks must be torch.tensor_split sizes of the sequence; got lengths {lengths}"
        )
    return n
