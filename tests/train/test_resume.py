"""Resume reproduces the run (every DDP rank's RNG), keeps the built model, and refuses changed settings."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import toy_tasks

from attnzoo.checkpoints import load_checkpoint
from attnzoo.train import load_config, train
from attnzoo.train.__main__ import main

RUNNER = Path(__file__).resolve().parent / "run_toy.py"
TINY = ["--task", "toy", "--model.dim", "16", "--model.num-layers", "1", "--batch-size", "16", "--eval-batches", "2"]
SMALL = {"model.dim": 16, "model.num_layers": 1, "model.mlp_dim": 32, "batch_size": 16, "eval_batches": 2}


@pytest.fixture(autouse=True)
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_tasks.install(monkeypatch)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a free rendezvous port each time (the fixed default 29500 may still be held by an earlier run)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RUNNER)]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=180)


def records(run_dir: Path, split: str = "train") -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["split"] == split}


def test_ddp_resume_with_dropout_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    args = [*TINY, "--steps", "12", "--eval-every", "4", "--log-every", "1", "--progress", "false"]
    args += ["--model.dropout", "0.3", "--model.attention-dropout", "0.2"]
    full = torchrun("train", *args, "--out-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    killed = torchrun("--kill-at-step", "10", "train", *args, "--out-dir", str(tmp_path / "run"))
    assert killed.returncode != 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 8 and len(state["rng"]) == 2  # one RNG state per rank
    resumed = torchrun("train", *args, "--out-dir", str(tmp_path / "run"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = {k: r["loss"] for k, r in records(tmp_path / "full").items()}
    got = {k: r["loss"] for k, r in records(tmp_path / "run").items()}
    assert sorted(got) == list(range(1, 13))
    assert got == expected  # bit for bit: rank 1's dropout masks continue where they stopped


def test_init_from_stores_and_resumes_the_adapted_model(tmp_path: Path) -> None:
    short = {**SMALL, "task": "toy", "steps": 2, "eval_every": 2, "progress": False, "out_dir": str(tmp_path / "a")}
    short |= {"task_options": {"seq_len": 12}, "model.attention": "local"}
    short["model.attention_options"] = {"window_size": 12}
    train(load_config(None, short))
    long = {**short, "out_dir": str(tmp_path / "b"), "task_options": {"seq_len": 24}}
    long["init_from"] = str(tmp_path / "a" / "best.pt")
    results = train(load_config(None, long))
    adapted = {"window_size": 24}  # the old length (12) follows the new one (24)
    assert results["config"]["model"]["attention_options"] == adapted
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"]["attention_options"] == adapted
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "b" / name)["config"]["model"]["attention_options"] == adapted
    again = train(load_config(None, {**long, "resume": "auto"}))  # the same command continues the same model
    assert again["config"]["model"]["attention_options"] == adapted and again["steps"] == 2
    from attnzoo.viz.attention_map import attention_maps_from_checkpoint

    for index in range(40):
        maps, info = attention_maps_from_checkpoint(tmp_path / "b" / "best.pt", index)
        if info["tokens"] > 14:
            break
    assert info["tokens"] > 14 and bool((maps[0] > 0).all())  # a 24-token window: every key is seen


def _first_run(tmp_path: Path) -> list[str]:
    args = [*TINY, "--steps", "6", "--eval-every", "3", "--log-every", "1", "--progress", "false"]
    args += ["--schedule", "constant", "--lr", "1e-3", "--out-dir", str(tmp_path / "run")]
    assert main(["train", *args]) == 0
    return args


def test_resume_refuses_changed_settings_and_names_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _first_run(tmp_path)
    capsys.readouterr()
    changed = ["--lr", "5e-4", "--batch-size", "8", "--seed", "1", "--data-seed", "3", "--betas", "[0.8, 0.9]"]
    changed += ["--out-dir", str(tmp_path / "run")]  # the seed is in the default out_dir; keep the folder
    assert main(["train", *args, *changed, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    for name in ("lr (checkpoint 0.001, now 0.0005)", "batch_size", "seed", "data_seed", "betas"):
        assert name in err
    assert "--resume-with-new-settings" in err
    assert main(["train", *args, "--set", "task_options={seq_len: 20}", "--resume", "auto"]) == 2
    assert "task_options" in capsys.readouterr().err
    # what does not change the trajectory may change
    assert main(["train", *args, "--resume", "auto", "--eval-batches", "1", "--log-every", "2"]) == 0


def test_resume_with_new_settings_applies_them(tmp_path: Path) -> None:
    args = _first_run(tmp_path)
    new = ["--lr", "5e-4", "--steps", "8", "--set", "weight_decay=0.5", "--resume", "auto"]
    assert main(["train", *args, *new, "--resume-with-new-settings"]) == 0
    logged = records(tmp_path / "run")
    assert [logged[s]["lr"] for s in range(1, 7)] == [1e-3] * 6
    assert [logged[s]["lr"] for s in (7, 8)] == [5e-4, 5e-4]  # the new rate, not the checkpoint's
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["lr"], config["steps"], config["weight_decay"]) == (5e-4, 8, 0.5)
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [5e-4, 5e-4] and [g["weight_decay"] for g in groups] == [0.5, 0.0]


def test_a_checkpoint_from_before_a_new_setting_resumes(tmp_path: Path) -> None:
    """Fields added to the configs after a checkpoint was written compare as their defaults (what it ran)."""
    from attnzoo.train.config import TrainConfig
    from attnzoo.train.resume import check_resume

    cfg = TrainConfig(task="toy")
    config = cfg.to_dict()
    old_model = {k: v for k, v in config["model"].items() if k not in ("arch", "vit_options")}
    old = {k: v for k, v in config.items() if k not in ("label_smoothing", "optimizer")}
    saved = {"config": {**old, "model": old_model}, "meta": {"requested_model": old_model}, "step": 3}
    resumed, changed = check_resume(saved, cfg, 1, tmp_path)
    assert resumed.model == cfg.model and not changed
    other = TrainConfig(task="toy", model=dataclasses.replace(cfg.model, dim=cfg.model.dim * 2))
    with pytest.raises(ValueError, match=r"the model differs: model\.dim \(checkpoint 64, now 128\)"):
        check_resume(saved, other, 1, tmp_path)
