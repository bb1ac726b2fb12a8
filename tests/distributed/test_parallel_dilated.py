"""Sequence-parallel LongNet equals the single-process mechanism on the full sequence (gloo, 2 and 4 ranks).

Each world size is spawned once (module fixture) and runs every case; each test checks one case.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from attnzoo.ops.dilated import dilated_attention
from attnzoo.ops.dilated.parallel import dilated_attention_parallel
from attnzoo.ops.dilated.parallel_plan import chunk_bounds, communication_model

from .spawn import run_ranks

# (name, N, segment_lengths, dilation_rates, causal, padded, offset_rule, detach)
CASES = [
    ("inside-chunks", 64, (8, 16), (1, 2), False, False, "torchscale", False),
    ("longer-than-chunk", 64, (8, 32, 64), (1, 2, 4), False, False, "torchscale", False),
    ("causal-longer", 64, (8, 32, 64), (1, 2, 4), True, False, "torchscale", False),
    ("uneven-N", 61, (6, 20, 61), (1, 3, 4), False, False, "paper", False),
    ("uneven-causal-padded", 61, (6, 20, 61), (1, 3, 4), True, True, "torchscale", False),
    ("w-beyond-N-padded", 50, (7, 16, 1000), (1, 2, 8), False, True, "torchscale", False),
    ("detached-mixing", 48, (4, 48), (1, 3), True, True, "paper", True),
]
HEADS, DIM, BATCH = 3, 8, 2


def _inputs(n: int, padded: bool) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(n)
    q, k, v, g = (torch.randn(BATCH, HEADS, n, DIM, generator=gen) for _ in range(4))
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    if padded:
        mask[1, n - n // 3 :] = False
    return q * 2, k, v, g, mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _parity(rank: int, world: int) -> dict[str, tuple[float, ...]]:
    errors: dict[str, tuple[float, ...]] = {}
    for name, n, segs, rates, causal, padded, rule, detach in CASES:
        q, k, v, g, mask = _inputs(n, padded)
        opts = dict(
            causal=causal, segment_lengths=segs, dilation_rates=rates, offset_rule=rule, detach_mixing=detach
        )
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = dilated_attention(*full, mask=mask if padded else None, **opts)
        (ref * g).sum().backward()
        start, stop = chunk_bounds(n, world)[rank]
        part = [t[:, :, start:stop].clone().requires_grad_() for t in (q, k, v)]
        out = dilated_attention_parallel(*part, mask=mask[:, start:stop] if padded else None, **opts)
        (out * g[:, :, start:stop]).sum().backward()
        pairs = [(out, ref[:, :, start:stop])] + [(p.grad, f.grad[:, :, start:stop]) for p, f in zip(part, full, strict=True)]
        errors[name] = tuple(_rel(a, b) for a, b in pairs)
    return errors


@pytest.fixture(scope="module", params=[2, 4])
def parity(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, tuple[float, ...]]]]:
    return request.param, run_ranks(request.param, _parity)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_forward_and_gradients_match_single_process(parity, case: str) -> None:
    world, results = parity
    for rank, errors in enumerate(results):
        out, dq, dk, dv = errors[case]
        assert max(out, dq, dk, dv) <= 1e-5, (world, rank, errors[case])


def _traffic(rank: int, world: int) -> list[tuple[float, float]]:
    """Bytes this rank hands to all_to_all_single, vs the model, for aligned configurations."""
    sent = []
    original = dist.all_to_all_single

    def counting(output, input, *args, **kwargs):  # noqa: A002
        sent.append(input.numel() * input.element_size())
        return original(output, input, *args, **kwargs)

    dist.all_to_all_single = counting
    found = []
    try:
        for n, segs, rates, causal, padded in [
            (128, (16, 64, 128), (1, 4, 8), False, False),
            (128, (16, 64, 128), (1, 4, 8), True, True),
            (256, (16, 64, 128, 256), (1, 4, 8, 16), False, True),
        ]:
            q, k, v, _, mask = _inputs(n, padded)
            start, stop = chunk_bounds(n, world)[rank]
            sent.clear()
            dilated_attention_parallel(
                q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop],
                mask=mask[:, start:stop] if padded else None, causal=causal, segment_lengths=segs,
                dilation_rates=rates,
            )  # fmt: skip
            model = communication_model(
                n, world, segs, rates, heads=HEADS, head_dim=DIM, batch=BATCH, causal=causal, with_mask=padded
            )
            found.append((float(sum(sent)), model))
    finally:
        dist.all_to_all_single = original
    return found


def test_counted_traffic_matches_the_model() -> None:
    world = 4
    results = run_ranks(world, _traffic)
    for case in range(3):
        busiest = max(results[r][case][0] for r in range(world))
        assert busiest == results[0][case][1] > 0
