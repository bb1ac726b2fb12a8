"""Sequence parallelism for the training harness: each example's sequence is split over a group of ranks.

``torchrun --nproc_per_node W -m attnzoo.train train --task ... --sequence-parallel P`` forms W / P
groups of P consecutive ranks. The ranks of a group read the same examples (data parallelism runs
across groups) and each holds a contiguous chunk of every sequence (``torch.tensor_split`` sizes).
:func:`attach` adapts a built model in place:

* every attention layer must be ``dilated``; it runs sequence-parallel over the group
  (:func:`attnzoo.ops.dilated.parallel.dilated_attention_parallel`);
* the model's forward receives the full batch and keeps this rank's chunk of ``input_ids``, ``mask``
  (and per-token labels); position encodings are read at the chunk's global positions;
* embeddings, MLPs and norms act per token and need no communication;
* pooled classifiers sum the pooled chunk means over the group (differentiable all-reduce), so
  every rank of the group holds the same logits; per-token losses are reduced over the group.

Gradients: every rank back-propagates the same global loss, so each rank's share of the
computation receives P times its gradient; DDP over the whole world divides by W = P * (W / P),
which leaves the data-parallel mean of the exact gradient. Metrics (correct, count) are divided
by P so that summing them over the world counts each example once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnzoo.mechanisms.dilated import DilatedAttention
from attnzoo.models import CLS_POOLINGS, TaskModel
from attnzoo.ops.dilated.parallel import set_sequence_parallel_group
from attnzoo.ops.dilated.parallel_plan import chunk_bounds
from attnzoo.train.distributed import DistInfo

__all__ = ["SequenceParallel", "all_reduce_sum_grad", "attach", "data_view", "make_groups"]


@dataclass
class SequenceParallel:
    """This rank's place: ``rank`` within its group of ``size``; the group is data shard ``data_rank``
    of ``data_world``. Per batch: the chunk ``[start, stop)`` of its ``length`` tokens and the real
    tokens per example ``counts`` (this chunk, whole sequence)."""

    size: int
    group: Any
    rank: int
    data_rank: int
    data_world: int
    start: int = 0
    stop: int = 0
    length: int = 0
    counts: tuple[Tensor, Tensor] = (torch.zeros(0), torch.zeros(0))


def make_groups(size: int) -> SequenceParallel:
    """Create the sequence-parallel groups (every rank creates every group, as torch requires).

    Raises:
        ValueError: ``size`` < 1, no process group for ``size`` > 1, or ``size`` not dividing the world.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"sequence_parallel must be a positive int, got {size!r}")
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else 1
    rank = dist.get_rank() if initialised else 0
    if world % size:
        raise ValueError(f"sequence_parallel={size} must divide the number of processes ({world})")
    if size == 1:
        return SequenceParallel(1, None, 0, rank, world)
    groups = [dist.new_group(list(range(first, first + size))) for first in range(0, world, size)]
    return SequenceParallel(size, groups[rank // size], rank % size, rank // size, world // size)


def data_view(info: DistInfo, sp: SequenceParallel) -> DistInfo:
    """``info`` as data loading sees it: this rank's group is data shard ``data_rank`` of ``data_world``."""
    return dataclasses.replace(info, rank=sp.data_rank, world_size=sp.data_world)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; backward sums the gradients (every rank back-propagates its own copy)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum_grad(x: Tensor, group: Any) -> Tensor:
    """Differentiable all-reduce (sum) over ``group``."""
    return _AllReduceSum.apply(x, group)


def attach(model: TaskModel, sp: SequenceParallel) -> TaskModel:
    """Make ``model`` (built as usual) run sequence-parallel over ``sp``'s group; returns it.

    Raises:
        ValueError: a model that cannot be split: non-``dilated`` attention, attention dropout,
            CLS pooling, patches, or two inputs (retrieval, an encoder-decoder).
    """
    if sp.size == 1:
        return model
    cfg = model.cfg
    problems = [
        f"layer {i} uses {type(b.attn).__name__}, not dilated"
        for i, b in enumerate(model.encoder.blocks)
        if not isinstance(b.attn, DilatedAttention)
    ]
    problems += ["model.attention_dropout > 0"] if cfg.attention_dropout > 0 else []
    cls_pooling = cfg.pooling in CLS_POOLINGS
    problems += [f"model.pooling = {cfg.pooling} (a CLS token at the sequence's start)"] if cls_pooling else []
    problems += ["model.patch_size > 1"] if cfg.patch_size != 1 else []
    problems += ["a paired (two-input) task: retrieval or encoder-decoder"] if model.task.paired else []
    if problems:
        raise ValueError(f"--sequence-parallel {sp.size} cannot split this model: {'; '.join(problems)}")
    for block in model.encoder.blocks:
        block.attn.options = dataclasses.replace(block.attn.options, sequence_parallel=True)
    set_sequence_parallel_group(sp.group)
    model.register_forward_pre_hook(lambda _module, args: (_split(args[0], sp),))
    positions = model.encoder.positions
    if not isinstance(positions, nn.Identity):
        positions.register_forward_hook(lambda module, args, _out: _shifted(module, args[0], sp))
    if hasattr(model, "head"):
        model.head.register_forward_pre_hook(lambda _module, args: (_pooled(args[0], sp, cfg.pooling),))
    local_loss, per_token = model.loss, model.task.target == "sequence"
    model.loss = lambda outputs, batch, label_smoothing=0.0: _loss(  # type: ignore[method-assign]
        local_loss, outputs, batch, label_smoothing, sp, per_token
    )
    return model


def _split(batch: dict[str, Tensor], sp: SequenceParallel) -> dict[str, Tensor]:
    """This rank's chunk of every per-token tensor of ``batch``; records the chunk and the real-token counts."""
    n = batch["input_ids"].shape[1]
    sp.length = n
    sp.start, sp.stop = chunk_bounds(n, sp.size)[sp.rank]
    local = {k: _chunk(v, n, sp) for k, v in batch.items()}
    sp.counts = (local["mask"].sum(1), batch["mask"].sum(1))
    return local


def _chunk(x: Tensor, n: int, sp: SequenceParallel) -> Tensor:
    return x[:, sp.start : sp.stop] if x.dim() >= 2 and x.shape[1] == n else x


def _shifted(module: nn.Module, x: Tensor, sp: SequenceParallel) -> Tensor:
    """``x + table[start:stop]``: the position encoding of the chunk's global positions."""
    table = module.weight if hasattr(module, "weight") else module.table
    if sp.stop > table.shape[0]:
        raise ValueError(f"sequence of {sp.stop} tokens is longer than the position table ({table.shape[0]})")
    return x + table[sp.start : sp.stop].to(x.dtype)


def _pooled(local: Tensor, sp: SequenceParallel, mode: str) -> Tensor:
    """Pooled chunk means ``(B, D)`` -> the pooled mean over the whole sequence (same on every rank)."""
    if mode == "mean-all":
        mine, total = torch.tensor(float(sp.stop - sp.start)), torch.tensor(float(sp.length))
    else:
        mine, total = sp.counts[0][:, None], sp.counts[1][:, None].clamp_min(1)
    summed = all_reduce_sum_grad(local * mine.to(local.dtype), sp.group)
    return summed / total.to(local.dtype)


def _loss(
    local_loss: Any,
    outputs: Tensor,
    batch: dict[str, Tensor],
    label_smoothing: float,
    sp: SequenceParallel,
    per_token: bool,
):
    """The model's loss over the whole sequence; correct and count divided by the group size."""
    if not per_token:  # pooled: every rank of the group holds the same logits
        loss, correct, count = local_loss(outputs, batch, label_smoothing)
        return loss, correct / sp.size, count / sp.size
    chunk = {**batch, "label": _chunk(batch["label"], sp.length, sp)}
    loss, correct, count = local_loss(outputs, chunk, label_smoothing)
    # a chunk without scored tokens has a NaN mean loss (0 / 0); it weighs 0
    parts = torch.stack([loss.float().nan_to_num(0.0) * count, correct.float(), count.float()])
    sums = all_reduce_sum_grad(parts, sp.group)
    return sums[0] / sums[2].clamp_min(1.0), sums[1] / sp.size, sums[2] / sp.size
