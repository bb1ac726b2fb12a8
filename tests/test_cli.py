"""The command line: list, bench (tiny), error reporting."""

import json

import pytest

from attnzoo.cli import main


def test_list_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("softmax", "local", "dilated", "none"):
        assert f"| `{name}` |" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"softmax", "local"}
    assert all("causal" in r and "time" in r for r in rows)


def test_bench_tiny_writes_records(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["bench", "--mechanisms", "softmax", "local", "--lengths", "64", "128", "--heads", "2", "--head-dim", "8",
            "--repeats", "1", "--option", "local.window_size=8", "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| local | 128 |" in table and "fwd+bwd / softmax" in table
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4
    assert {r["executor"] for r in records} == {"gather", "dense-kernel"}
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in records)
    assert main(argv) == 0  # appends, keeps what was there
    assert len(out.read_text().splitlines()) == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--mechanisms", "bogus", "--lengths", "8"], "unknown attention mechanism 'bogus'"),
        (["bench", "--mechanisms", "local", "--lengths", "8", "--option", "window_size=3"], "MECHANISM.NAME=VALUE"),
        (["bench", "--mechanisms", "local", "--lengths", "8", "--option", "local.size=3"], "unknown option 'size'"),
    ],
)
def test_bench_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
