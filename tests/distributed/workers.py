"""What each of 4 gloo ranks runs (spawned once per test session; tests read the returned numbers).

* ``parity``: sequence-parallel LongNet vs the single-process mechanism on the full sequence, over
  the whole world (P = 4) and over two groups of 2 ranks (P = 2, the ``group`` argument).
* ``traffic``: bytes handed to ``all_to_all_single`` vs :func:`communication_model`.
* ``training``: a few optimiser steps of sequence-parallel models vs the same model in one process.
* ``errors``: the messages of incompatible settings inside a process group.
* the training harness (``attnzoo.train``) with ``--sequence-parallel 2`` on 4 ranks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from attnzoo.models import ModelConfig, build_model
from attnzoo.ops.dilated import dilated_attention
from attnzoo.ops.dilated.parallel import dilated_attention_parallel
from attnzoo.ops.dilated.parallel_plan import chunk_bounds, communication_model
from attnzoo.tasks.spec import TaskSpec
from attnzoo.train.sequence_parallel import attach, make_groups

# (name, N, segment_lengths, dilation_rates, causal, padded, offset_rule, detach)
CASES = [
    ("inside-chunks", 64, (8, 16), (1, 2), False, False, "torchscale", False),
    ("longer-than-chunk", 64, (8, 32, 64), (1, 2, 4), False, False, "torchscale", False),
    ("causal-longer", 64, (8, 32, 64), (1, 2, 4), True, False, "torchscale", False),
    ("uneven-N", 61, (6, 20, 61), (1, 3, 4), False, False, "paper", False),
    ("uneven-causal-padded", 61, (6, 20, 61), (1, 3, 4), True, True, "torchscale", False),
    ("w-beyond-N-padded", 50, (7, 16, 1000), (1, 2, 8), False, True, "torchscale", False),
    ("detached-mixing", 48, (4, 48), (1, 3), True, True, "paper", True),
    # P = 4: the last chunk is a segment of its own, yet its rank must join the exchange (forward and backward)
    ("rank-without-crossing", 64, (8, 48), (1, 2), False, False, "torchscale", False),
]
TRAFFIC = [  # (N, segment_lengths, dilation_rates, causal, padded), aligned for P = 4
    (128, (16, 64, 128), (1, 4, 8), False, False),
    (128, (16, 64, 128), (1, 4, 8), True, True),
    (256, (16, 64, 128, 256), (1, 4, 8, 16), False, True),
]
HEADS, DIM, BATCH = 3, 8, 2


def inputs(n: int, padded: bool) -> tuple[torch.Tensor, ...]:
    """Seeded ``q, k, v, upstream gradient`` ``(B, H, N, d)`` and a padding mask (example 1 padded)."""
    gen = torch.Generator().manual_seed(n)
    q, k, v, g = (torch.randn(BATCH, HEADS, n, DIM, generator=gen) for _ in range(4))
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    if padded:
        mask[1, n - n // 3 :] = False
    return q * 2, k, v, g, mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def parity(group: Any) -> dict[str, tuple[float, ...]]:
    """Per case: relative errors of (out, dq, dk, dv) of this rank's chunk."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    errors = {}
    for name, n, segs, rates, causal, padded, rule, detach in CASES:
        q, k, v, g, mask = inputs(n, padded)
        kw: dict[str, Any] = dict(
            causal=causal, segment_lengths=segs, dilation_rates=rates, offset_rule=rule, detach_mixing=detach
        )
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = dilated_attention(*full, mask=mask if padded else None, **kw)
        (ref * g).sum().backward()
        start, stop = chunk_bounds(n, world)[rank]
        part = [t[:, :, start:stop].clone().requires_grad_() for t in (q, k, v)]
        out = dilated_attention_parallel(*part, mask=mask[:, start:stop] if padded else None, group=group, **kw)
        (out * g[:, :, start:stop]).sum().backward()
        pairs = [(out, ref[:, :, start:stop])] + [
            (p.grad, f.grad[:, :, start:stop]) for p, f in zip(part, full, strict=True)
        ]
        errors[name] = tuple(_rel(a, b) for a, b in pairs)
    return errors


def low_precision() -> tuple[float, float]:
    """bf16: relative error of this rank's output and dq vs the single-process mechanism in bf16."""
    world, rank = dist.get_world_size(), dist.get_rank()
    q, k, v, g, mask = (t.bfloat16() if t.is_floating_point() else t for t in inputs(61, True))
    kw: dict[str, Any] = dict(causal=True, segment_lengths=(6, 20, 61), dilation_rates=(1, 3, 4))
    full = q.clone().requires_grad_()
    ref = dilated_attention(full, k, v, mask=mask, **kw)
    (ref * g).sum().backward()
    start, stop = chunk_bounds(61, world)[rank]
    part = q[:, :, start:stop].clone().requires_grad_()
    chunk = [t[:, :, start:stop] for t in (k, v)]
    out = dilated_attention_parallel(part, *chunk, mask=mask[:, start:stop], **kw)
    (out * g[:, :, start:stop]).sum().backward()
    assert out.dtype == part.grad.dtype == torch.bfloat16
    return _rel(out.float(), ref[:, :, start:stop].float()), _rel(
        part.grad.float(), full.grad[:, :, start:stop].float()
    )


def output_buffer() -> dict[str, Any]:
    """The mixed output lives in the engine's output buffer: what the caller sees, before and after backward.

    Returns: whether the output shares the engine's saved output storage, the largest change of the
    output across the backward pass, the largest difference to the same call without autograd, and
    the message when the output was modified in place before the backward pass.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    q, k, v, g, mask = inputs(64, True)
    start, stop = chunk_bounds(64, world)[rank]
    kw: dict[str, Any] = dict(causal=True, segment_lengths=(8, 32, 64), dilation_rates=(1, 2, 4))
    chunk = [t[:, :, start:stop].clone().requires_grad_() for t in (q, k, v)]
    local_mask = mask[:, start:stop]
    out = dilated_attention_parallel(*chunk, mask=local_mask, **kw)
    before = out.detach().clone()
    shared = out.grad_fn.out.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    (out * g[:, :, start:stop]).sum().backward()
    with torch.no_grad():
        plain = dilated_attention_parallel(*chunk, mask=local_mask, **kw)
    modified = dilated_attention_parallel(*chunk, mask=local_mask, **kw)
    modified.mul_(2.0)
    try:
        modified.sum().backward()
        message = ""
    except RuntimeError as err:
        message = str(err)
    return {
        "shared": shared,
        "changed": float((out.detach() - before).abs().max()),
        "no_grad": float((plain - before).abs().max()),
        "in_place": message,
    }


def traffic() -> list[tuple[float, float]]:
    """Per configuration: (bytes this rank sent through all_to_all_single, the model's busiest rank)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    sent: list[int] = []
    original = dist.all_to_all_single

    def counting(output, tensor, *args, **kwargs):
        sent.append(tensor.numel() * tensor.element_size())
        return original(output, tensor, *args, **kwargs)

    dist.all_to_all_single = counting
    found = []
    try:
        for n, segs, rates, causal, padded in TRAFFIC:
            q, k, v, _, mask = inputs(n, padded)
            start, stop = chunk_bounds(n, world)[rank]
            sent.clear()
            chunk = [t[:, :, start:stop] for t in (q, k, v)]
            local_mask = mask[:, start:stop] if padded else None
            kw: dict[str, Any] = dict(causal=causal, segment_lengths=segs, dilation_rates=rates)
            dilated_attention_parallel(*chunk, mask=local_mask, **kw)
            model = communication_model(
                n, world, segs, rates, heads=HEADS, head_dim=DIM, batch=BATCH, causal=causal, with_mask=padded
            )
            found.append((float(sum(sent)), model))
    finally:
        dist.all_to_all_single = original
    return found


# (task target, N, classes, model overrides)
TRAINING = {
    "classifier-mean": ("class", 40, 3, dict(pooling="mean", positions="learned")),
    "classifier-mean-all": ("class", 33, 4, dict(pooling="mean-all", positions="sinusoidal", norm="post")),
    "causal-lm": ("sequence", 37, 11, dict(pooling="mean", positions="learned", causal=True)),
}


def _task(target: str, n: int, classes: int) -> TaskSpec:
    return TaskSpec("toy", n, "tokens", 13, 0, classes, target, False, 0, "accuracy", None, "toy")


def _batch(target: str, n: int, classes: int, step: int, padded: bool) -> dict[str, torch.Tensor]:
    """Batch ``step`` of 4 examples (examples 2 and 3 padded on their tails when ``padded``)."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(1, 13, (4, n), generator=gen)
    mask = torch.ones(4, n, dtype=torch.bool)
    if padded:
        mask[2, n - 9 :] = False
        mask[3, n // 2 :] = False
    ids = ids * mask
    if target == "sequence":
        label = torch.randint(0, classes, (4, n), generator=gen).masked_fill(~mask, -100)
    else:
        label = torch.randint(0, classes, (4,), generator=gen)
    return {"input_ids": ids, "mask": mask, "label": label}


def _model(target: str, n: int, classes: int, overrides: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    options = dict(segment_lengths=(4, 12, 64), dilation_rates=(1, 2, 4))
    cfg = ModelConfig(
        attention="dilated", attention_options=options, dim=12, num_heads=3, num_layers=2, mlp_dim=16,
        dropout=0.0, attention_dropout=0.0, **overrides,
    )  # fmt: skip
    return build_model(_task(target, n, classes), cfg)


def _steps(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], world: int) -> list[float]:
    """SGD steps; with ``world`` > 1 gradients are averaged over the world as DDP does."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for batch in batches:
        opt.zero_grad()
        loss, _, _ = model.loss(model(batch), batch)
        loss.backward()
        if world > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
            logged = loss.detach().clone()
            dist.all_reduce(logged)
            loss = logged / world
        opt.step()
        losses.append(float(loss))
    return losses


def training(size: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per model: (single-process losses on whole batches, sequence-parallel losses), 3 steps each.

    With ``size`` < world the groups are data-parallel too: group g trains on examples 2g, 2g + 1.
    """
    sp = make_groups(size)
    found = {}
    for name, (target, n, classes, overrides) in TRAINING.items():
        batches = [_batch(target, n, classes, step, padded=target == "class") for step in range(3)]
        reference = _steps(_model(target, n, classes, overrides), batches, 1)
        shard = 4 // sp.data_world
        mine = [{k: v[sp.data_rank * shard : (sp.data_rank + 1) * shard] for k, v in b.items()} for b in batches]
        model = attach(_model(target, n, classes, overrides), sp)
        found[name] = (reference, _steps(model, mine, dist.get_world_size()))
    return found


def errors() -> dict[str, str]:
    """Messages of settings that cannot work."""
    found = {}
    q = torch.zeros(1, 2, 5, 4)
    for name, call in {
        "wrong-chunk": lambda: dilated_attention_parallel(q, q, q, seq_len=40),
        "dropout": lambda: dilated_attention_parallel(q, q, q, dropout_p=0.1),
        "uneven-split": lambda: dilated_attention_parallel(*(torch.zeros(1, 2, 5 + dist.get_rank(), 4),) * 3),
        "groups": lambda: make_groups(3),
        "softmax-model": lambda: attach(build_model(_task("class", 8, 2), ModelConfig()), make_groups(2)),
    }.items():
        try:
            call()
        except ValueError as err:
            found[name] = str(err)
    return found


def trainer_config(out_dir: str, sequence_parallel: int) -> Any:
    """A 4-step causal-LM run of the harness with dilated attention (N = 42 over 2 ranks: segments cross)."""
    from attnzoo.train.config import TrainConfig

    model = ModelConfig(
        attention="dilated", attention_options={"segment_lengths": (8, 16, 42), "dilation_rates": (1, 2, 4)},
        dim=16, num_heads=2, num_layers=2, mlp_dim=32, dropout=0.0, attention_dropout=0.0, causal=True,
    )  # fmt: skip
    return TrainConfig(
        task="associative-recall", train_size=64, dev_size=16, test_size=16, cache_dir=f"{out_dir}/cache",
        model=model, batch_size=8, steps=4, lr=1e-2, eval_every=4, log_every=1, device="cpu",
        out_dir=f"{out_dir}/sp{sequence_parallel}", progress=False, tensorboard=False,
        sequence_parallel=sequence_parallel,
    )  # fmt: skip


def trainer(rank: int, world: int, out_dir: str) -> int:
    """``attnzoo.train`` as torchrun starts it (the process group exists already; it leaves it).

    Returns the number of k/v exchanges (``all_to_all_single`` calls): proof that sequences were split.
    """
    from attnzoo.train.loop import train

    calls = []
    original = dist.all_to_all_single

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_to_all_single = counting
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        train(trainer_config(out_dir, 2))
    finally:
        dist.all_to_all_single = original
    return len(calls)


def everything(rank: int, world: int, out_dir: str) -> dict[str, Any]:
    """Run every experiment on this rank (collectives in the same order on every rank); the harness run
    (2 x 2 ranks, written to ``out_dir/sp2``) comes last: it leaves the process group."""
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    found = {
        "parity4": parity(None),
        "parity2": parity(pairs[rank // 2]),
        "traffic": traffic(),
        "bf16": low_precision(),
        "buffer": output_buffer(),
        "training4": training(4),
        "training2": training(2),
        "errors": errors(),
    }
    found["harness_exchanges"] = trainer(rank, world, out_dir)
    return found
