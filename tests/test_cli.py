"""The command line: list, bench (tiny), error reporting, prefixed option flags."""

import argparse
import json

import pytest

import attnzoo
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
    argv = [
        "bench",
        "--mechanisms",
        "softmax",
        "local",
        "--lengths",
        "64",
        "128",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--repeats",
        "1",
        "--option",
        "local.window_size=8",
        "--no-errors",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| local | 128 |" in table and "/ softmax" in table
    records = [json.loads(line) for line in out.read_text().splitlines()]
    times = [r for r in records if r["kind"] == "time"]
    assert len(times) == 8 and len(records) == 9  # 2 mechanisms x 2 lengths x 2 passes, one matmul peak
    executors = {(r["mechanism"], r["executor"]) for r in times}  # what ran: short sequences take one fused call
    assert executors == {("softmax", "dense-kernel"), ("local", "fused-dense")}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in times)
    assert main(argv) == 0  # appends, keeps what was there
    assert len(out.read_text().splitlines()) == 18


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


def test_two_prefixes_keep_their_own_options():
    parser = argparse.ArgumentParser()
    attnzoo.add_arguments(parser, "local", prefix="enc")
    attnzoo.add_arguments(parser, "local", prefix="dec")
    args = parser.parse_args(["--enc-window-size", "32", "--dec-window-size", "8"])
    assert attnzoo.options_from_args(args, prefix="enc") == {"window_size": 32}
    assert attnzoo.options_from_args(args, prefix="dec") == {"window_size": 8}
    with pytest.raises(ValueError, match=r"several prefixes \(dec, enc\); pass prefix="):
        attnzoo.options_from_args(args)
    with pytest.raises(ValueError, match=r"no flags were added with prefix 'mid' \(added: 'dec', 'enc'\)"):
        attnzoo.options_from_args(args, prefix="mid")
    plain = argparse.ArgumentParser()
    attnzoo.add_arguments(plain, "local")
    assert attnzoo.options_from_args(plain.parse_args(["--window-size", "5"])) == {"window_size": 5}
