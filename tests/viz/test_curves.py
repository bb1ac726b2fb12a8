"""``attnzoo curves``: learning curves read from ``metrics.jsonl`` and drawn, errors that name the problem."""

import json

import pytest

from attnzoo.cli import main
from attnzoo.viz.curves import read_curve


def write_run(path, records):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    {"step": 10, "split": "train", "loss": 2.0, "accuracy": 0.1},
    {"step": 500, "split": "dev", "loss": 1.5, "accuracy": 0.30, "train_time_s": 80.0},
    {"step": 250, "split": "dev", "loss": 1.9, "accuracy": 0.20, "train_time_s": 40.0},
    {"step": 500, "split": "test", "loss": 1.4, "accuracy": 0.31},
]


def test_read_curve_takes_the_split_in_step_order(tmp_path):
    run = write_run(tmp_path / "r", RECORDS)
    assert read_curve(run) == [(250.0, 0.20), (500.0, 0.30)]
    assert read_curve(run, x="train_time_s", metric="loss") == [(40.0, 1.9), (80.0, 1.5)]
    assert read_curve(run, split="test") == [(500.0, 0.31)]


def test_read_curve_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        read_curve(tmp_path)
    run = write_run(tmp_path / "r", RECORDS)
    with pytest.raises(ValueError, match=r"no 'dev' record with 'step' and 'bleu'.*accuracy, loss, split, step"):
        read_curve(run, metric="bleu")


def test_cli_draws_runs_with_published_lines(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    first = write_run(tmp_path / "a", RECORDS)
    second = write_run(tmp_path / "b", RECORDS[:2])
    out = tmp_path / "curves.png"
    args = [str(first) + "=nystrom", str(second), "--out", str(out), "--percent", "--published", "nystrom=37.15"]
    args += ["--chance", "17.4"]
    assert main(["curves", *args]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_refuses_a_bad_published_value(tmp_path, capsys):
    run = write_run(tmp_path / "a", RECORDS)
    with pytest.raises(SystemExit):
        main(["curves", str(run), "--out", str(tmp_path / "x.png"), "--published", "nystrom"])
    assert "--published takes LABEL=VALUE with a number, got 'nystrom'" in capsys.readouterr().err
