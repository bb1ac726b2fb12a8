"""``attnzoo bench-decode`` on tiny settings: records, the table, state sizes against the context, errors."""

import json

import pytest

from attnzoo.bench.decode import format_table, time_decoding
from attnzoo.cli import main

TINY = ["--contexts", "8", "40", "--steps", "3", "--heads", "2", "--head-dim", "4"]


def test_tiny_run_prints_the_table_and_writes_records(tmp_path, capsys):
    out = tmp_path / "decode.jsonl"
    argv = ["bench-decode", "--mechanisms", "softmax", "linear", *TINY, "--option=softmax.", "--out", str(out)]
    assert main(argv) == 2
    assert "attention option must look like name=value" in capsys.readouterr().err and not out.exists()
    argv = [a for a in argv if a != "--option=softmax."]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mechanism"], r["context"], r["status"]) for r in records] == [
        ("softmax", 8, "ok"),
        ("softmax", 40, "ok"),
        ("linear", 8, "ok"),
        ("linear", 40, "ok"),
    ]
    assert all(r["ms_per_token"] >= r["ms_min"] > 0 and r["steps"] == 3 and "env" in r for r in records)
    # softmax's KV cache grows with the context (k, v fp32 + the real flags); linear's sums do not
    b, h, d = 1, 2, 4
    softmax_bytes = [b * (2 * h * d * 4 + 1) * (n + 2 + 3) for n in (8, 40)]
    assert [r["state_bytes"] for r in records[:2]] == softmax_bytes
    assert [r["state_bytes"] for r in records[2:]] == [b * h * d * (d + 1) * 4] * 2
    assert "attnzoo bench-decode --mechanisms softmax linear --contexts 8 40 --steps 3" in printed
    assert "| mechanism | L=8 | L=40 | longest / shortest |" in printed and "| linear | " in printed


def test_mechanisms_that_cannot_decode_are_reported_not_fatal():
    record = time_decoding("causal_eva", {"num_chunks": 2}, 8, steps=1, heads=1, head_dim=4)
    assert record["status"].startswith("n/a: causal_eva with num_chunks cannot decode")
    ok = time_decoding("linear", {}, 8, steps=2, heads=1, head_dim=4)
    table = format_table([record, ok, {**ok, "context": 16, "ms_per_token": 2 * ok["ms_per_token"]}])
    assert "| causal_eva | n/a | - | - |" in table and "| linear | " in table and "| 2.00x |" in table
    assert "- causal_eva: n/a: causal_eva with num_chunks cannot decode" in table


def test_bad_arguments_name_the_problem(capsys):
    with pytest.raises(SystemExit):
        main(["bench-decode", "--mechanisms", "linear", "--steps", "0"])
    assert "argument --steps: expected a whole number > 0, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown attention mechanism 'nonexistent'"):
        time_decoding("nonexistent", {}, 8)
