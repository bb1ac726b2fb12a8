"""Seeds trained in parallel processes (``train_seeds(workers=...)``, ``--seed-workers``).

In a module of its own: the toy tasks of test_train.py are patched into this process only, and the spawned
processes see the registered tasks.
"""

from pathlib import Path

import pytest
import torch

from attnzoo.cli import main
from attnzoo.train import load_config, train_seeds
from attnzoo.train.runs import seed_workers

SMALL = {"model.dim": 16, "model.num_layers": 1, "model.mlp_dim": 32, "batch_size": 16, "eval_batches": 2,
         "progress": False}  # fmt: skip


def test_seeds_in_parallel_processes_equal_the_same_runs_one_after_another(tmp_path: Path) -> None:
    """Two seeds in two spawned processes (one thread each) give exactly the numbers of the same two runs trained
    here one after another on one thread; a registered task (spawned processes do not see the toy one)."""
    tiny = {**SMALL, "task": "kv-lookup", "train_size": 64, "dev_size": 32, "test_size": 32, "steps": 3}
    parallel = train_seeds(load_config(None, {**tiny, "out_dir": str(tmp_path / "p{seed}")}), 2, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = train_seeds(load_config(None, {**tiny, "out_dir": str(tmp_path / "s{seed}")}), 2, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert parallel["seeds"] == serial["seeds"] == [0, 1]
    for got, want in zip(parallel["runs"], serial["runs"], strict=True):
        assert (got["seed"], got["loss"], got["accuracy"]) == (want["seed"], want["loss"], want["accuracy"])
    assert parallel["runs"][0]["loss"] != parallel["runs"][1]["loss"]  # two different seeds, not one run twice
    assert (tmp_path / "pall" / "summary.json").is_file()


@pytest.mark.parametrize("bad", [0, -1, "two", True])
def test_seed_workers_rejects_bad_counts(bad: object) -> None:
    cfg = load_config(None, {**SMALL, "task": "kv-lookup"})
    with pytest.raises(ValueError, match="seed workers must be 'auto' or a whole number >= 1"):
        seed_workers(cfg, 2, bad)  # type: ignore[arg-type]
    assert seed_workers(cfg, 1) == 1 and seed_workers(cfg, 3, 5) == 3


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_the_seed_workers_flag_refuses_bad_values(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--seed-workers", bad])
    assert exit_info.value.code == 2
    assert f"expected 'auto' or a whole number >= 1, got {bad!r}" in capsys.readouterr().err
