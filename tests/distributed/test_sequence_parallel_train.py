"""A sequence-parallel training run reproduces the single-process run's losses step for step."""

from __future__ import annotations

import pytest

from .workers import TRAINING


@pytest.mark.parametrize("key", ["training4", "training2"])
@pytest.mark.parametrize("model", list(TRAINING))
def test_losses_match_single_process_step_for_step(ranks, key: str, model: str) -> None:
    for rank, result in enumerate(ranks):
        reference, parallel = result[key][model]
        assert len(reference) == len(parallel) == 3
        assert reference[0] != reference[-1]  # the run trains
        for step, (want, got) in enumerate(zip(reference, parallel, strict=True)):
            assert abs(got - want) <= 1e-5 * abs(want), (key, model, rank, step, reference, parallel)
