"""A sequence-parallel training run reproduces the single-process run's losses step for step."""

from __future__ import annotations

import json

import pytest
import torch

import attnzoo
from attnzoo.train.sequence_parallel import make_groups

from .workers import TRAINING, trainer_config


@pytest.mark.parametrize("key", ["training4", "training2"])
@pytest.mark.parametrize("model", list(TRAINING))
def test_losses_match_single_process_step_for_step(ranks, key: str, model: str) -> None:
    for rank, result in enumerate(ranks):
        reference, parallel = result[key][model]
        assert len(reference) == len(parallel) == 3
        assert reference[0] != reference[-1]  # the run trains
        for step, (want, got) in enumerate(zip(reference, parallel, strict=True)):
            assert abs(got - want) <= 1e-5 * abs(want), (key, model, rank, step, reference, parallel)


def test_sequence_parallel_needs_processes() -> None:
    with pytest.raises(ValueError, match=r"sequence_parallel=2 must divide the number of processes \(1\)"):
        make_groups(2)
    with pytest.raises(ValueError, match="sequence_parallel must be a positive int, got 0"):
        make_groups(0)
    single = make_groups(1)
    assert (single.size, single.data_rank, single.data_world) == (1, 0, 1)


def test_module_option_needs_a_process_group() -> None:
    module = attnzoo.build("dilated", 16, 2, sequence_parallel=True, segment_lengths=(4,), dilation_rates=(1,))
    assert module.options.sequence_parallel is True
    with pytest.raises(ValueError, match=r"needs an initialised torch\.distributed process group"):
        module(torch.randn(1, 8, 16))
    with pytest.raises(TypeError, match="sequence_parallel"):
        attnzoo.build("dilated", 16, 2, sequence_parallel="yes")


def test_harness_run_matches_single_process(ranks, harness_dir) -> None:
    """``torchrun --nproc_per_node 4 -m attnzoo.train train ... --sequence-parallel 2`` (2 sequence-parallel
    x 2 data-parallel ranks) logs the single-process run's train losses step for step."""
    from attnzoo.train.log import read_records
    from attnzoo.train.loop import train

    # 2 layers x (forward + backward) x 4 steps, plus forwards of the dev and test evaluations
    assert all(result["harness_exchanges"] >= 16 for result in ranks)
    single = train(trainer_config(str(harness_dir), 1))
    losses = {}
    for name in ("sp1", "sp2"):
        records = read_records(harness_dir / name / "metrics.jsonl")
        losses[name] = [r["loss"] for r in records if r.get("split") == "train"]
    assert len(losses["sp1"]) == len(losses["sp2"]) == 4
    assert losses["sp1"][0] != losses["sp1"][-1]
    for want, got in zip(losses["sp1"], losses["sp2"], strict=True):
        assert abs(got - want) <= 1e-5 * abs(want), losses
    parallel = json.loads((harness_dir / "sp2" / "results.json").read_text())
    assert parallel["world_size"] == 4
    assert parallel["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert parallel["accuracy"] == pytest.approx(single["accuracy"], abs=1e-9)
