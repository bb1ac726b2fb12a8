"""Every ``configs/mini/*.yaml``: it loads and validates, names a real task, and (generated tasks) trains 2 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnzoo import tasks
from attnzoo.models import build_model
from attnzoo.train import load_config, train
from attnzoo.train.config import CONFIG_ROOT, default_config_path, read_config_file

MINI = sorted((CONFIG_ROOT / "mini").glob("*.yaml"))
OFFICIAL_ONLY = {"image", "text", "retrieval", "cifar10", "image-folder"}  # need --data-dir; others are generated
TINY_DATA = {"train_size": 16, "dev_size": 8, "test_size": 8}


def task_of(path: Path) -> str:
    return str(read_config_file(path)["task"])


def test_every_generatable_task_has_a_mini_config() -> None:
    have = {task_of(p) for p in MINI}
    wanted = {"listops", "listops-mini", "pathfinder32", "pathfinder64", "pathx", "adding", "temporal-order"}
    wanted |= {"copy", "selective-copy", "associative-recall", "reverse", "sort"} | OFFICIAL_ONLY
    assert wanted <= have


@pytest.mark.parametrize("path", MINI, ids=lambda p: p.stem)
def test_mini_config_is_valid_and_resolved_by_task_name(path: Path) -> None:
    task = task_of(path)
    assert task in {t.name for t in tasks.available()}
    # `attnzoo train --task T` finds mini/T.yaml (listops-mini.yaml is named after its task too)
    assert path.stem == task and default_config_path(task) == path
    cfg = load_config(path)  # type-checks every field and runs validate()
    assert cfg.task == task and cfg.data_dir is None
    assert cfg.max_time > 0 and cfg.steps <= 5000 and cfg.model.dim <= 64 and cfg.model.num_layers <= 2
    assert cfg.model.dropout == 0.0 and cfg.model.attention_dropout == 0.0  # keeps SDPA on its fused CPU kernel
    assert cfg.eval_every <= cfg.steps
    spec = tasks.get(cfg.task, **cfg.task_options)  # task options are valid for the task
    if task not in OFFICIAL_ONLY:
        assert cfg.train_size is not None or tasks.get_task(task).sizes["train"] <= 20_000  # no 100k-example generation
    model = build_model(spec, cfg.model)
    assert 0 < sum(p.numel() for p in model.parameters()) < 500_000


@pytest.mark.parametrize("task", sorted(OFFICIAL_ONLY))
def test_official_data_mini_models_run_on_a_fake_batch(task: str) -> None:
    cfg = load_config(None, {"progress": False}, task=task)
    assert default_config_path(task).parent.name == "mini"
    spec = tasks.get(cfg.task, **cfg.task_options)
    model = build_model(spec, cfg.model)
    torch.manual_seed(0)
    shape = (2, spec.seq_len, spec.num_features) if spec.input_kind == "image" else (2, spec.seq_len)
    batch = {
        "input_ids": torch.randint(1, spec.vocab_size, shape),
        "mask": torch.ones(2, spec.seq_len, dtype=torch.bool),
        "label": torch.tensor([0, 1]),
    }
    if spec.paired:
        batch["input_ids2"], batch["mask2"] = batch["input_ids"].flip(0), batch["mask"]
    loss, _, count = model.loss(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and count.item() == 2


# overrides that shrink the slowest configs further (the model itself stays the config's)
GENERATED = [task_of(p) for p in MINI if task_of(p) not in OFFICIAL_ONLY]
SHRINK = {
    "pathfinder64": {"batch_size": 2},
    "pathx": {"batch_size": 2},
}


@pytest.mark.parametrize("task", GENERATED)
def test_generated_mini_config_trains_two_steps(task: str, tmp_path: Path) -> None:
    overrides = {
        **TINY_DATA,
        "steps": 2,
        "eval_every": 2,
        "warmup_steps": 1,
        "batch_size": 4,
        "eval_batches": 1,
        "cache_dir": str(tmp_path / "cache"),
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
        **SHRINK.get(task, {}),
    }
    cfg = load_config(None, overrides, task=task)  # resolves configs/mini/<task>.yaml
    full = load_config(None, task=task)
    assert cfg.model == full.model  # the config's own model, not a stand-in
    results = train(cfg)
    assert results["task"] == task and results["steps"] == 2
    assert results["test_examples"] >= TINY_DATA["test_size"]  # per-token tasks count scored tokens
    assert results["loss"] == results["loss"]  # not NaN
