"""``attnzoo bench`` end to end on tiny settings: outputs, docs splice, --compare exit codes, errors."""

import json

import pytest

from attnzoo.bench.cli import DOCS_BEGIN, DOCS_END
from attnzoo.cli import main

TINY = [
    "bench",
    "--mechanisms",
    "softmax",
    "local",
    "--lengths",
    "32",
    "64",
    "--shapes",
    "1x1x8",
    "--repeats",
    "1",
    "--error-lengths",
    "16",
    "--option",
    "local.window_size=4",
]


def test_tiny_sweep_writes_every_output_and_compares(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Bench\n\nhand-written\n\n{DOCS_BEGIN}\nold numbers\n{DOCS_END}\n\ntail\n")
    out = tmp_path / "run"
    assert main([*TINY, "--out-dir", str(out), "--docs", str(docs)]) == 0
    report = capsys.readouterr().out
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("time") == 8 and kinds.count("peak") == 1 and kinds.count("error") == 6
    assert [r for r in records if r["status"] != "ok"] == [] and all("env" in r for r in records)
    assert {p.name for p in out.iterdir()} >= {
        "records.jsonl",
        "records.csv",
        "report.md",
        "time-vs-n-cpu-float32-b1-h1-d8-noncausal.png",
        "memory-vs-n-cpu-float32-b1-h1-d8-noncausal.png",
        "error-vs-n.png",
    }
    assert "### Crossover with softmax" in report and "| local (exact) | 16 |" in report
    assert "--option=local.window_size=4" in report  # the command that reruns it
    text = docs.read_text()
    assert text.startswith("# Bench\n\nhand-written\n") and text.endswith(f"{DOCS_END}\n\ntail\n")
    assert "old numbers" not in text and report.strip() in text

    assert main(["bench", "--compare", str(out / "records.jsonl"), "--against", str(out / "records.jsonl")]) == 0
    assert "# 0 regression(s)" in capsys.readouterr().out
    slower = [{**r, "ms": r["ms"] * 2 + 1.0} if r["kind"] == "time" else r for r in records]
    (tmp_path / "slower.jsonl").write_text("".join(json.dumps(r) + "\n" for r in slower))
    assert main(["bench", "--compare", str(out / "records.jsonl"), "--against", str(tmp_path / "slower.jsonl")]) == 1
    printed = capsys.readouterr().out
    assert printed.count("REGRESSED") == 8 and "# 8 regression(s)" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--shapes", "1x8"], "BATCHxHEADSxHEAD_DIM"),
        (["bench", "--mechanisms", "softmax", "--option", "local.window_size=4"], "not benchmarked"),
        (["bench", "--against", "x.jsonl"], "--against NEW.jsonl needs --compare OLD.jsonl"),
        (["bench", "--compare", "missing.jsonl", "--against", "missing.jsonl"], "missing.jsonl"),
    ],
)
def test_bench_argument_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--lengths", "-5"], "argument --lengths: expected a whole number > 0, got '-5'"),
        (["bench", "--lengths", "64", "0"], "argument --lengths: expected a whole number > 0, got '0'"),
        (["bench", "--time-budget-s", "-1"], "argument --time-budget-s: expected a number > 0, got '-1'"),
        (["bench", "--memory-budget-mib", "nan"], "argument --memory-budget-mib: expected a number > 0, got 'nan'"),
        (["bench", "--repeats", "two"], "argument --repeats: expected a whole number > 0, got 'two'"),
        (["bench-decode", "--contexts", "-1"], "argument --contexts: expected a whole number > 0, got '-1'"),
    ],
)
def test_bench_refuses_non_positive_sizes_before_running(argv, message, capsys):
    """``--lengths -5`` once ran every case, recorded each as failed and exited 0."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_docs_without_markers_is_an_error(tmp_path, capsys):
    docs = tmp_path / "plain.md"
    docs.write_text("# nothing to fill\n")
    argv = [
        "bench",
        "--mechanisms",
        "softmax",
        "--lengths",
        "16",
        "--shapes",
        "1x1x4",
        "--repeats",
        "1",
        "--no-errors",
        "--forward-only",
        "--no-memory",
        "--docs",
        str(docs),
    ]
    assert main(argv) == 2
    assert "has no <!-- attnzoo-bench:begin -->" in capsys.readouterr().err


def test_the_printed_command_reruns_the_same_sweep():
    import dataclasses
    import shlex

    from attnzoo.bench.cli import _command, _sweep
    from attnzoo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "bench",
            "--quick",
            "--causal",
            "both",
            "--heads",
            "2",
            "--option",
            "local.window_size=8",
            "--option",
            "dilated.segment_lengths=64,128",
            "--option",
            "dilated.dilation_rates=1,2",
            "--peers",
            "--forward-only",
        ]
    )
    preset, mechanisms, options = _sweep(args)
    again = parser.parse_args(shlex.split(_command(preset, mechanisms, args))[1:])
    preset_again, mechanisms_again, options_again = _sweep(again)
    assert (mechanisms_again, options_again) == (mechanisms, options)
    assert dataclasses.replace(preset_again, mechanisms=None) == dataclasses.replace(preset, mechanisms=None)
    assert options["local"] == {"window_size": 8} and options["dilated"]["segment_lengths"] == (64, 128)
    assert preset.causal == (False, True) and preset.passes == ("fwd",) and preset.shapes[0].heads == 2


@pytest.mark.parametrize(("flag", "folder"), [("--out", True), ("--markdown", True), ("--out-dir", False)])
def test_an_output_path_of_the_wrong_kind_fails_before_the_sweep(tmp_path, capsys, flag, folder):
    """A folder given for --out (or a file for --out-dir) is refused at once, not after the sweep has run."""
    target = tmp_path / "taken"
    if folder:
        target.mkdir()
    else:
        target.write_text("keep me\n")
    argv = ["bench", "--mechanisms", "softmax", "--lengths", "16", "--shapes", "1x1x4", flag, str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} {str(target)!r} is {'a folder' if folder else 'a file'}" in err
    assert "# attnzoo bench:" not in err  # the sweep never started (its header line)
    assert folder or target.read_text() == "keep me\n"
