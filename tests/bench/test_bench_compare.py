"""``--compare``: matching cases across runs and the noise-aware regression verdict."""

import json

import pytest

from attnzoo.bench.compare import case_id, compare_records, load_records


def _rec(ms, iqr=0.0, mem=10.0, status="ok", n=1024, **extra):
    return {
        "kind": "time",
        "mechanism": "local",
        "seq_len": n,
        "pass": "fwd",
        "dtype": "float32",
        "causal": False,
        "batch": 1,
        "heads": 8,
        "head_dim": 64,
        "device": "cpu",
        "compile": False,
        "options": {"window_size": 8},
        "status": status,
        "ms": ms,
        "iqr_ms": iqr,
        "mem_mib": mem,
        **extra,
    }


def test_case_identity_ignores_measurements_but_not_options():
    assert case_id(_rec(1.0)) == case_id(_rec(2.0, iqr=1.0, mem=3.0))
    assert case_id(_rec(1.0)) != case_id(_rec(1.0, options={"window_size": 16}))
    assert case_id(_rec(1.0)) != case_id(_rec(1.0, n=2048))


@pytest.mark.parametrize(
    ("old", "new", "regressions"),
    [
        (_rec(100.0, iqr=1.0), _rec(120.0, iqr=1.0), 0),  # within the 20 % tolerance (+ 0.5 ms)
        (_rec(100.0, iqr=1.0), _rec(121.0, iqr=1.0), 1),  # past it, steady measurements
        (_rec(100.0, iqr=8.0), _rec(124.0, iqr=1.0), 0),  # noisy old run: 3 x 8 % = 24 % allowed
        (_rec(100.0, iqr=8.0), _rec(125.0, iqr=1.0), 1),
        (_rec(1.0), _rec(1.4), 0),  # sub-millisecond jitter: 1.2 + 0.5 ms allowed
        (_rec(1.0), _rec(1.8), 1),
        (_rec(100.0), _rec(50.0), 0),  # faster is never a regression
        (_rec(100.0, mem=100.0), _rec(100.0, mem=111.5), 1),  # memory past 1.1 x old + 1 MiB
        (_rec(100.0, mem=100.0), _rec(100.0, mem=110.5), 0),
        (_rec(100.0), _rec(None, status="timeout"), 1),  # ran before, does not now
        (_rec(None, status="timeout"), _rec(None, status="timeout"), 0),
    ],
)
def test_regression_verdict(old, new, regressions):
    lines, found = compare_records([old], [new])
    assert found == regressions
    assert sum(line.startswith("REGRESSED") for line in lines) == regressions


def test_error_and_unmatched_cases():
    err = {"kind": "error", "mechanism": "performer", "seq_len": 256, "dist": "unit-variance", "status": "ok"}
    lines, found = compare_records([{**err, "err_softmax": 0.10}], [{**err, "err_softmax": 0.12}])
    assert found == 1 and "err_softmax: 0.1 -> 0.12 (+20.0%)" in lines[0]
    lines, found = compare_records([_rec(1.0, n=512)], [_rec(1.0, n=2048)])
    assert found == 0 and lines[0].startswith("new") and lines[1].startswith("gone")


def test_tolerance_is_adjustable():
    assert compare_records([_rec(100.0)], [_rec(130.0)], tolerance=0.5)[1] == 0
    assert compare_records([_rec(100.0)], [_rec(130.0)], tolerance=0.2)[1] == 1


def test_load_records(tmp_path):
    lines = tmp_path / "a.jsonl"
    lines.write_text(json.dumps(_rec(1.0)) + "\n\n" + json.dumps(_rec(2.0)) + "\n")
    assert [r["ms"] for r in load_records(lines)] == [1.0, 2.0]
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps([_rec(3.0)]))
    assert load_records(listed)[0]["ms"] == 3.0
    bad = tmp_path / "c.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="not JSON lines"):
        load_records(bad)
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "missing.jsonl")
