"""Sequence-parallel LongNet equals the single-process mechanism on the full sequence (gloo, 2 and 4 ranks)."""

from __future__ import annotations

import pytest
import torch

from attnzoo.ops.dilated.parallel import dilated_attention_parallel
from attnzoo.ops.dilated.parallel_plan import chunk_bounds, communication_model, rank_plan

from .workers import CASES, TRAFFIC


@pytest.mark.parametrize("key", ["parity4", "parity2"])
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_forward_and_gradients_match_single_process(ranks, key: str, case: str) -> None:
    for rank, result in enumerate(ranks):
        errors = result[key][case]  # relative errors of out, dq, dk, dv
        assert len(errors) == 4
        assert max(errors) <= 1e-5, (key, rank, errors)


def test_bf16_matches_single_process_bf16(ranks) -> None:
    for result in ranks:
        out, dq = result["bf16"]
        assert out <= 2e-2 and dq <= 5e-2, result["bf16"]


def test_output_is_the_engine_buffer_and_survives_backward(ranks) -> None:
    for result in ranks:
        found = result["buffer"]
        assert found["shared"] is True  # no second output-sized tensor per rank
        assert found["changed"] == 0.0  # the rows swapped for the engine's backward are put back
        assert found["no_grad"] < 1e-6  # the inference path mixes the same rows in place
        # autograd refuses it, in the version check or, when the output is a view of the engine's, at the view
        assert "modified by an inplace operation" in found["in_place"] or "modified inplace" in found["in_place"]


def test_counted_traffic_matches_the_model(ranks) -> None:
    for case in range(len(TRAFFIC)):
        sent = [result["traffic"][case][0] for result in ranks]
        model = ranks[0]["traffic"][case][1]
        assert max(sent) == model > 0, (case, sent, model)
    causal = [result["traffic"][1][0] for result in ranks]
    assert causal[-1] < causal[0]  # causal: the last rank of a segment sends nothing back


def test_incompatible_settings_raise_clear_errors(ranks) -> None:
    errors = ranks[1]["errors"]
    assert errors["wrong-chunk"] == "rank 1 of 4 must hold 10 of N=40 tokens, got 5"
    assert "no attention dropout; got dropout_p=0.1" in errors["dropout"]
    assert errors["uneven-split"].endswith("got lengths [5, 6, 7, 8]")
    assert errors["groups"] == "sequence_parallel=3 must divide the number of processes (4)"
    assert "layer 0 uses SoftmaxAttention, not dilated" in errors["softmax-model"]


def test_chunks_follow_tensor_split() -> None:
    x = torch.arange(61)
    assert [tuple(c.tolist()[:: len(c) - 1]) for c in x.tensor_split(4)] == [(a, b - 1) for a, b in chunk_bounds(61, 4)]
    with pytest.raises(ValueError, match="a sequence of N=3 tokens cannot be split over 4 processes"):
        chunk_bounds(3, 4)


def test_needs_a_process_group() -> None:
    q = torch.zeros(1, 2, 8, 4)
    with pytest.raises(ValueError, match=r"needs an initialised torch\.distributed process group"):
        dilated_attention_parallel(q, q, q)


def test_plan_sends_only_sparsified_rows() -> None:
    # N=64 on 4 ranks, one branch w=64 r=4 over 2 heads with offsets 0 and 1: rank 1 sends its 16/4 rows per head
    plan = rank_plan(64, 4, 1, ((64, 4, (0, 1)),), False)
    assert plan.send_splits == (4, 0, 4, 4) and plan.recv_splits == (4, 0, 4, 4)
    assert plan.send_index.tolist() == [[0, 4, 8, 12] * 3, [1, 5, 9, 13] * 3]
    causal = rank_plan(64, 4, 1, ((64, 4, (0, 1)),), True)
    assert causal.send_splits == (0, 0, 4, 4) and causal.recv_splits == (4, 0, 0, 0)
    assert not plan.inner  # the only segment crosses every chunk


def test_traffic_is_constant_in_n_for_geometric_branches() -> None:
    def geometric(n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ws = [2048 * 2**i for i in range(30) if 2048 * 2**i <= n]
        return tuple(ws), tuple(w // 2048 for w in ws)

    kw = dict(heads=12, head_dim=64, itemsize=2)
    for world in (8, 64, 512):
        sizes = [communication_model(n, world, *geometric(n), **kw) for n in (2**20, 2**24, 2**30)]
        assert len(set(sizes)) == 1 and sizes[0] > 0
    assert communication_model(2**20, 8, (2048,), (1,), **kw) == 0  # segments inside chunks: nothing to send
