"""The leaderboard job: defaults, per-task options, seeds, and the task it runs by default."""

import csv
from pathlib import Path

import numpy as np
import pytest

import attnzoo
from attnzoo import tasks
from attnzoo.tasks.synthetic.lookup import LookupOptions, kv_lookup
from attnzoo.train.compare import (
    DEFAULT_TASK,
    TASK_OPTIONS,
    compare,
    default_mechanisms,
    runnable,
    task_options_for,
)

TINY = {"model.dim": 16, "model.num_layers": 1, "batch_size": 8, "eval_batches": 1, "progress": False}


def test_default_set_has_at_least_eight_mechanisms_when_registered():
    names = default_mechanisms()
    assert {"softmax", "local", "none"} <= set(names)
    registered = {s.name for s in attnzoo.available()}
    if len(registered) >= 8:
        assert len(names) >= 8


@pytest.mark.parametrize(("task", "name"), [(t, n) for t, per in TASK_OPTIONS.items() for n in per])
def test_task_options_build(task, name):
    if name not in {s.name for s in attnzoo.available()}:
        pytest.skip(f"{name} is not registered")
    options = task_options_for(task, name)
    assert options, f"no option of {name} matched TASK_OPTIONS[{task!r}]"
    attnzoo.build(name, 16, 2, **options)


def test_given_options_override_task_defaults_and_are_checked():
    assert task_options_for("kv-lookup", "local") == {"window_size": 16}
    assert task_options_for("kv-lookup", "local", {"window_size": 300}) == {"window_size": 300}
    assert task_options_for("toy", "local") == {}


def test_default_local_window_cannot_reach_most_evidence():
    """The leaderboard can separate local from softmax: the window misses the evidence in most queries."""
    window = TASK_OPTIONS[DEFAULT_TASK]["local"]["window_size"]
    opts = LookupOptions()
    assert tasks.get(DEFAULT_TASK).seq_len == opts.seq_len and window < opts.seq_len // 4
    data = kv_lookup(opts, 2000, np.random.default_rng(0))
    ids, labels = data.inputs.astype(int), data.labels
    base = opts.noise_symbols + 1
    queries = ids[:, -opts.num_queries :] - (base + opts.num_keys * opts.num_values)
    assert (queries >= 0).all() and (labels[:, : -opts.num_queries] == -100).all()
    pair = ids[:, : -opts.num_queries] - base
    distances = []
    for row in range(len(ids)):
        stored = np.flatnonzero((pair[row] >= 0) & (pair[row] < opts.num_keys * opts.num_values))
        assert len(stored) == opts.num_pairs
        keys, values = pair[row, stored] // opts.num_values, pair[row, stored] % opts.num_values
        assert len(set(keys.tolist())) == opts.num_pairs  # distinct keys: every query has one answer
        for j, key in enumerate(queries[row]):
            (hit,) = np.flatnonzero(keys == key)
            assert labels[row, opts.seq_len - opts.num_queries + j] == values[hit]
            distances.append(opts.seq_len - opts.num_queries + j - stored[hit])
    reachable = (np.asarray(distances) <= 2 * window).mean()  # two layers of a +-w window
    assert 0.1 < reachable < 0.35


def test_all_selects_mechanisms_that_can_run_the_task():
    for spec in attnzoo.available():
        assert runnable(spec.name, causal=False) == spec.capabilities.bidirectional
        assert runnable(spec.name, causal=True) == spec.capabilities.causal


def test_compare_seeds_options_and_baseline(tmp_path: Path):
    out = tmp_path / "cmp"
    rows = compare(
        "kv-lookup",
        ["local", "none"],
        out_dir=out,
        overrides={
            **TINY,
            "steps": 2,
            "eval_every": 2,
            "train_size": 64,
            "dev_size": 16,
            "test_size": 16,
            "cache_dir": str(tmp_path / "cache"),
        },
        attention_options={"local": {"look_back": 8}},
        seeds=2,
        plot=False,
    )
    assert [r["mechanism"] for r in rows] == ["local", "none"]
    assert rows[0]["options"] == "window_size=16, look_back=8" and rows[0]["seeds"] == 2
    table = (out / "compare.md").read_text()
    assert "| local | window_size=16, look_back=8 |" in table and " ± " in table
    assert "majority class (trivial predictor)" in table
    with open(out / "compare.csv", newline="") as handle:
        assert [r["mechanism"] for r in csv.DictReader(handle)] == ["local", "none"]
    assert (out / "local-s0").is_dir() and (out / "local-s1").is_dir()


def test_compare_rejects_bad_requests(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown mechanism"):
        compare("kv-lookup", ["nope"], out_dir=tmp_path, overrides=TINY)
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        compare("kv-lookup", ["none"], out_dir=tmp_path, overrides=TINY, seeds=0)
