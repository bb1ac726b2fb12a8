"""The training CLI says what it does: why a run stopped, progress lines without a terminal, Ctrl-C/SIGTERM
checkpoints, clean refusals of existing run folders, generated --help, trackers (issue 26)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import toy_tasks

from attnzoo.checkpoints import load_checkpoint
from attnzoo.cli import main as attnzoo_main
from attnzoo.cli import resume_command
from attnzoo.models import ModelConfig
from attnzoo.train import load_config, train
from attnzoo.train.__main__ import main
from attnzoo.train.config import TrainConfig, check_one_cycle, field_docs
from attnzoo.train.trackers import wandb_mode

RUNNER = Path(__file__).resolve().parent / "run_toy.py"
TINY = ["--task", "toy", "--model.dim", "16", "--model.num-layers", "1", "--batch-size", "16", "--eval-batches", "2"]
SMALL = {"task": "toy", "model.dim": 16, "model.num_layers": 1, "model.mlp_dim": 32, "batch_size": 16}


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_tasks.install(monkeypatch)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, env=env, timeout=120)


def small(tmp_path: Path, **overrides: Any) -> TrainConfig:
    values = {**SMALL, "eval_batches": 2, "steps": 6, "eval_every": 3, "log_every": 2, "out_dir": str(tmp_path / "run")}
    return load_config(None, {**values, **overrides})


def train_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_stop_reason_is_printed_and_recorded(tmp_path: Path, toy: None, capsys: pytest.CaptureFixture[str]) -> None:
    done = train(small(tmp_path, progress=False))
    assert (done["stopped"], done["steps"]) == ("steps", 6)
    assert "attnzoo train: finished 6 steps" in capsys.readouterr().err
    cut = train(small(tmp_path, out_dir=str(tmp_path / "cut"), steps=50, max_time=1e-9, progress=False))
    assert (cut["stopped"], cut["steps"]) == ("max_time", 1)  # the budget is gone after the first step
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["stopped"] == "max_time"
    err = capsys.readouterr().err
    assert "stopped at step 1 of 50: max_time 1e-09 s of training reached" in err
    assert "--resume auto --max-time 0" in err


def test_log_lines_on_stdout_without_a_terminal(tmp_path: Path, toy: None, capsys: pytest.CaptureFixture[str]) -> None:
    train(small(tmp_path))  # progress on, but pytest's captured stderr is no terminal: no bar, lines instead
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "step 2/6",
        "step 3/6",  # dev
        "step 4/6",
        "step 6/6",
        "step 6/6",  # dev
    ]
    assert lines[0].split(" | ")[1].startswith("train loss ") and lines[0].endswith(" steps/s")
    assert " | lr " in lines[0] and " | dev loss " in lines[1] and "best " in lines[1]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["split"] == "train")
    assert f"train loss {first['loss']:.4f}" in lines[0]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path: Path, sig: str, code: int) -> None:
    args = [*TINY, "--steps", "8", "--eval-every", "4", "--log-every", "1", "--out-dir", str(tmp_path / "run")]
    stopped = run_cli("--signal-at-step", "2", sig, "train", *args)
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"stopped by {sig} at step 3; checkpoint {tmp_path / 'run'}/last.pt written" in stopped.stderr
    assert f"resume with: python -m attnzoo.train train {' '.join(args)} --resume auto" in stopped.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3  # the step under way when the signal came
    assert not (tmp_path / "run" / "results.json").exists()
    if sig == "SIGINT":  # the printed command continues the run exactly
        full = run_cli("train", *args[:-1], str(tmp_path / "full"))
        resumed = run_cli("train", *args, "--resume", "auto")
        assert full.returncode == 0 and resumed.returncode == 0, resumed.stderr
        assert train_losses(tmp_path / "run") == train_losses(tmp_path / "full")


def test_resume_command_replaces_any_resume_flag() -> None:
    assert resume_command("attnzoo", ["train", "--resume", "x.pt", "--lr", "1"]) == "attnzoo train --lr 1 --resume auto"
    assert resume_command("attnzoo", ["train", "--resume=auto", "--out-dir", "a b"]) == (
        "attnzoo train --out-dir 'a b' --resume auto"
    )


def test_out_dir_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert attnzoo_main(["train", "--steps", "2", "--out-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"attnzoo train: error: out_dir {str(target)!r} is a file, not a folder; pass a folder path as --out-dir\n"
    )


def test_existing_and_finished_runs_are_refused_unless_overwrite(
    tmp_path: Path, toy: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", *TINY, "--steps", "2", "--eval-every", "2", "--progress", "false", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a checkpoint; pass --resume auto" in err and "--overwrite" in err
    for checkpoint in tmp_path.glob("*.pt"):
        checkpoint.unlink()
    first = json.loads((tmp_path / "results.json").read_text())
    for extra in ([], ["--resume", "auto"]):
        assert main([*args, *extra]) == 2
        assert "holds a finished run (results.json) without last.pt" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text()) == first  # untouched
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 1


def test_help_is_generated_from_the_config_docs(capsys: pytest.CaptureFixture[str]) -> None:
    for cls in (TrainConfig, ModelConfig):  # every field documented in the Attributes section
        names = [f for f in cls.__dataclass_fields__ if f not in ("config_file", "preset")]
        assert [n for n in names if not field_docs(cls).get(n)] == []
    with pytest.raises(SystemExit):
        attnzoo_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr FLOAT peak learning rate. (default: 0.001)" in text
    assert "--data-dir TEXT|none folder of official-layout files" in text
    assert "--model.dim INT model width D (= qkv width). (default: 64)" in text
    assert "--overwrite [BOOL] a fresh run replaces the last.pt" in text
    assert "--betas LIST AdamW betas [beta1, beta2]. (default: [0.9, 0.999])" in text


@pytest.mark.parametrize(
    ("argv", "usage", "unknown"),
    [
        (["train", "--bogus", "1"], "usage: attnzoo train", "--bogus 1"),
        (["data", "generate", "x", "--out", "d", "--nope"], "usage: attnzoo data generate", "--nope"),
    ],
)
def test_unknown_flag_prints_the_subcommand_usage(
    argv: list[str], usage: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        attnzoo_main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(usage)
    assert err.endswith(f"{usage[7:]}: error: unrecognized arguments: {unknown}\n")


def test_one_cycle_phases_are_validated() -> None:
    for warmup, steps in ((1, 10), (10, 10), (0, 10)):
        with pytest.raises(
            ValueError, match=rf"onecycle needs 2 <= warmup_steps <= steps - 1 .*warmup_steps {warmup}, steps {steps}"
        ):
            load_config(None, {"schedule": "onecycle", "warmup_steps": warmup, "steps": steps})
    load_config(None, {"schedule": "onecycle", "warmup_steps": 2, "steps": 3})
    with pytest.raises(ValueError, match="2 <= warmup <= num_train_steps - 1"):
        check_one_cycle(1, 100, warmup_name="warmup", steps_name="num_train_steps")
    for value in ("-1", float("nan")):
        with pytest.raises(ValueError, match="max_time must be >= 0"):
            load_config(None, {"max_time": value})


class _Recorder:
    """A stand-in module: every attribute is a function that records its call."""

    def __init__(self, name: str, returns: dict[str, Any] | None = None) -> None:
        self.module = types.ModuleType(name)
        self.calls: list[tuple[str, tuple, dict]] = []
        for attr in ("init", "log", "finish", "set_experiment", "start_run", "log_params", "log_metrics", "end_run"):
            setattr(self.module, attr, self._record(attr, (returns or {}).get(attr)))

    def _record(self, attr: str, result: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((attr, args, kwargs))
            return result

        return call

    def named(self, attr: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for name, a, k in self.calls if name == attr]


def test_wandb_and_mlflow_get_every_record(tmp_path: Path, toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb_run = _Recorder("wandb_run")
    wandb, mlflow = _Recorder("wandb", {"init": wandb_run.module}), _Recorder("mlflow")
    monkeypatch.setitem(sys.modules, "wandb", wandb.module)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow.module)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    train(small(tmp_path, log_to="wandb,mlflow", progress=False))
    ((_, init),) = wandb.named("init")
    assert init["mode"] == "offline" and init["name"] == "run" and init["config"]["lr"] == 1e-3
    logged = {(kw["step"], key) for args, kw in wandb_run.named("log") for key in args[0]}
    assert {(2, "train/loss"), (3, "dev/accuracy"), (6, "test/loss")} <= logged
    assert len(wandb_run.named("finish")) == 1
    ((params, _),) = mlflow.named("log_params")
    assert params[0]["lr"] == "0.001" and params[0]["model.dim"] == "16"
    assert [kw["step"] for _, kw in mlflow.named("log_metrics")] == [2, 3, 4, 6, 6, 6]
    assert len(mlflow.named("end_run")) == 1


def test_wandb_mode_follows_the_users_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password key\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_missing_tracker_package_is_one_line(
    tmp_path: Path, toy: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails as if not installed
    assert main(["train", *TINY, "--steps", "2", "--log-to", "mlflow", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo train: error: log_to mlflow needs the mlflow package") and err.count("\n") == 1
    assert 'pip install -e ".[mlflow]"' in err
    assert main(["train", *TINY, "--log-to", "neptune"]) == 2
    assert "log_to: unknown tracker(s) neptune; available: wandb, mlflow" in capsys.readouterr().err
