"""The harness end to end on tiny generated tasks: learning, resume after a kill, DDP, errors, curriculum."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import toy_tasks

from attnzoo.checkpoints import load_checkpoint
from attnzoo.train import load_config, train, train_seeds
from attnzoo.train.__main__ import main

RUNNER = Path(__file__).resolve().parent / "run_toy.py"
TINY = ["--task", "toy", "--model.dim", "16", "--model.num-layers", "1", "--batch-size", "16", "--eval-batches", "2"]
SMALL = {
    "model.dim": 16,
    "model.num_layers": 1,
    "model.mlp_dim": 32,
    "batch_size": 16,
    "eval_batches": 2,
    "progress": False,
}


@pytest.fixture(autouse=True)
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_tasks.install(monkeypatch)


def run_cli(*args: str, env_extra: dict[str, str] | None = None, torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    # --standalone: a free rendezvous port each time (the fixed default 29500 may still be held by an earlier run)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.run([*launcher, str(RUNNER), *args], capture_output=True, text=True, env=env, timeout=120)


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_tiny_model_learns_and_writes_everything(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            **SMALL,
            "task": "toy",
            "steps": 80,
            "eval_every": 40,
            "log_every": 10,
            "lr": 3e-3,
            "schedule": "cosine",
            "warmup_steps": 5,
            "out_dir": str(tmp_path / "run"),
        },
    )
    results = train(cfg)
    losses = train_losses(tmp_path / "run")
    assert losses[80] < 0.5 * losses[10]
    assert results["accuracy"] > 0.8 and results["dev_accuracy"] > 0.8  # chance is about 0.5
    for key in ("steps_per_s", "tokens_per_s", "peak_memory_mb", "parameters", "loss"):
        assert results[key] > 0
    assert results["config"]["model"]["dim"] == 16 and results["seed"] == 0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,split,loss,accuracy")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 80 and state["data_position"]["epoch"] >= 2
    assert len(state["rng"]) == 1 and {"python", "numpy", "torch"} <= set(state["rng"][0])  # one per rank


def test_bf16_performer_trains_through_the_cli(tmp_path: Path) -> None:
    """``attnzoo train --precision bf16 --attention performer`` (issue 24: its backward raised a dtype error)."""
    run_dir = tmp_path / "run"
    args = ["--attention", "performer", "--precision", "bf16", "--steps", "2", "--log-every", "1"]
    assert main(["train", *TINY, *args, "--warmup-steps", "0", "--out-dir", str(run_dir)]) == 0
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2] and all(math.isfinite(loss) for loss in losses.values())
    assert json.loads((run_dir / "config.json").read_text())["precision"] == "bf16"


def test_killed_run_resumes_with_identical_losses(tmp_path: Path) -> None:
    args = [*TINY, "--steps", "12", "--eval-every", "4", "--log-every", "1"]
    full = run_cli("train", *args, "--out-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = run_cli("--kill-at-step", "10", "train", *args, "--out-dir", str(tmp_path / "run"))
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 8
    again = run_cli("train", *args, "--out-dir", str(tmp_path / "run"))
    assert again.returncode == 2 and "--resume auto" in again.stderr  # refuses to overwrite
    resumed = run_cli("train", *args, "--out-dir", str(tmp_path / "run"), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = train_losses(tmp_path / "full"), train_losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 13))
    assert got == expected  # bit for bit, step for step


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    args = [
        *TINY,
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--log-every",
        "1",
        "--model.dropout",
        "0",
        "--model.attention-dropout",
        "0",
    ]
    ddp = run_cli("train", *args, "--out-dir", str(tmp_path / "ddp"), torchrun=True)
    assert ddp.returncode == 0, ddp.stderr[:3000] + " ... " + ddp.stderr[-3000:]
    single = run_cli("train", *args, "--out-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    a, b = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert len(a) == 6 and all(abs(a[k] - b[k]) < 1e-5 for k in a)  # same global batches, gradients averaged
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["test_examples"] == toy_tasks.SIZES["test"]  # all-reduced
    assert ddp.stdout.count('"task": "toy"') == 1  # only rank 0 prints


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data_dir" in capsys.readouterr().err
    assert main(["train", *TINY, "--schedule", "warp"]) == 2
    assert "schedule must be one of" in capsys.readouterr().err
    assert main(["train", *TINY, "--attention-option", "window=3"]) == 2
    assert "unknown option 'window'" in capsys.readouterr().err
    bad = tmp_path / "run" / "last.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert main(["train", *TINY, "--steps", "2", "--out-dir", str(bad.parent), "--resume", "auto"]) == 2
    assert "corrupted" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an attnzoo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_init_from_shorter_length_resizes_positions(tmp_path: Path) -> None:
    short = load_config(
        None,
        {
            **SMALL,
            "task": "toy",
            "steps": 4,
            "eval_every": 4,
            "out_dir": str(tmp_path / "a"),
            "task_options": {"seq_len": 12},
        },
    )
    train(short)
    long = load_config(
        None,
        {
            **SMALL,
            "task": "toy",
            "steps": 2,
            "eval_every": 2,
            "out_dir": str(tmp_path / "b"),
            "task_options": {"seq_len": 24},
            "init_from": str(tmp_path / "a" / "best.pt"),
        },
    )
    results = train(long)
    assert results["resized_from_init"] == ["encoder.positions.weight: (12, 16) -> (24, 16)"]
    old = load_checkpoint(tmp_path / "a" / "best.pt")["model"]["encoder.blocks.0.mlp.net.0.weight"]
    assert results["steps"] == 2 and old.shape == (32, 16)


def test_seeds_report_mean_and_std(tmp_path: Path) -> None:
    cfg = load_config(None, {**SMALL, "task": "toy", "steps": 3, "eval_every": 3, "out_dir": str(tmp_path / "s{seed}")})
    summary = train_seeds(cfg, 2)
    accs = [r["accuracy"] for r in summary["runs"]]
    assert summary["seeds"] == [0, 1]
    assert summary["accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert summary["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert (tmp_path / "sall" / "summary.json").is_file()
    with pytest.raises(ValueError, match="seed"):
        train_seeds(load_config(None, {**SMALL, "task": "toy", "out_dir": str(tmp_path / "x")}), 2)


def test_compare_writes_table_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            *TINY,
            "--attention",
            "softmax",
            "none",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--out-dir",
            str(out),
            "--set",
            "progress=false",
            "--seed-workers",
            "1",  # the toy tasks exist in this process only (parallel seeds: test_parallel_seeds.py)
        ]
    )
    assert rc == 0
    table = (out / "compare.md").read_text()
    assert "| softmax |" in table and "| none |" in table and "majority class" in table
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("mechanism,options,seeds,steps,accuracy")
    pytest.importorskip("matplotlib")
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| softmax |" in capsys.readouterr().out


def test_attention_map_command(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {**SMALL, "task": "toy", "steps": 2, "eval_every": 2, "out_dir": str(tmp_path / "r"), "model.num_heads": 2},
    )
    train(cfg)
    from attnzoo.viz.attention_map import attention_maps_from_checkpoint

    maps, info = attention_maps_from_checkpoint(tmp_path / "r" / "best.pt", 3)
    assert len(maps) == 1 and maps[0].shape[0] == 2 and maps[0].shape[1] == info["tokens"]
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, info["tokens"]), atol=1e-5)  # softmax rows
    with pytest.raises(ValueError, match="out of range"):
        attention_maps_from_checkpoint(tmp_path / "r" / "best.pt", 10_000)
    pytest.importorskip("matplotlib")
    out = tmp_path / "map.png"
    assert (
        main(["attention-map", "--checkpoint", str(tmp_path / "r" / "best.pt"), "--index", "3", "--out", str(out)]) == 0
    )
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_profile_overhead_reports_rates(tmp_path: Path) -> None:
    from attnzoo.train.overhead import measure_overhead

    cfg = load_config(None, {**SMALL, "task": "toy"})
    report = measure_overhead(cfg, steps=4, warmup=2, repeats=1)
    assert report["raw_fwd_bwd_steps_per_s"] > 0 and report["harness_steps_per_s"] > 0
    assert "overhead_vs_fwd_bwd_opt_pct" in report


def test_real_listops_mini_integration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real attnzoo.tasks, not the toy stand-in
    tasks = pytest.importorskip("attnzoo.tasks")
    if not hasattr(tasks, "load_split"):
        pytest.skip("attnzoo.tasks is not available yet")
    cfg = load_config(
        None,
        {
            "steps": 2,
            "eval_every": 2,
            "batch_size": 8,
            "train_size": 32,
            "dev_size": 16,
            "test_size": 16,
            "cache_dir": str(tmp_path / "cache"),
            "out_dir": str(tmp_path / "r"),
            "model.dim": 16,
            "model.mlp_dim": 32,
            "progress": False,
        },
        task="listops-mini",
    )
    results = train(cfg)
    assert results["task"] == "listops-mini" and results["test_examples"] == 16 and results["steps"] == 2


def test_nonfinite_loss_stops_before_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss from step 6 on: the run stops at the step-8 checkpoint without writing it; last.pt stays step 4."""
    from attnzoo.models.heads import TaskModel

    calls = {"n": 0}
    loss = TaskModel.loss

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        value, correct, count = loss(self, *args, **kwargs)
        calls["n"] += self.training
        return (value * math.nan if calls["n"] >= 6 else value), correct, count

    monkeypatch.setattr(TaskModel, "loss", poisoned)
    run_dir = tmp_path / "run"
    overrides = {**SMALL, "task": "toy", "steps": 30, "log_every": 10, "save_every": 4, "eval_every": 20}
    cfg = load_config(None, {**overrides, "out_dir": str(run_dir)})
    with pytest.raises(FloatingPointError, match=r"step 8/30: the train loss is nan .*checkpoints in .* before it"):
        train(cfg)
    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 4
    calls["n"] = 0
    cfg = load_config(None, {**overrides, "log_every": 4, "out_dir": str(tmp_path / "logged")})
    with pytest.raises(FloatingPointError, match=r"step 8/30: the train loss is nan"):
        train(cfg)  # caught by the log at step 8, which comes first
    assert math.isnan(train_losses(tmp_path / "logged")[8])
