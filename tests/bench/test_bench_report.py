"""Floor, exponents, crossovers and the Markdown / CSV report from synthetic records (exact numbers)."""

import csv
import io

import pytest

from attnzoo.bench.report import add_floor, crossovers, fit_exponent, format_report, scaling_exponents, to_csv


def _time(mech, n, ms, mem=None, status="ok", passname="fwdbwd", **extra):
    rec = {
        "kind": "time",
        "mechanism": mech,
        "seq_len": n,
        "pass": passname,
        "dtype": "float32",
        "causal": False,
        "batch": 1,
        "heads": 8,
        "head_dim": 64,
        "device": "cpu",
        "compile": False,
        "status": status,
    }
    if status == "ok":
        rec.update(ms=ms, iqr_ms=0.1 * ms, mem_mib=mem)
    return {**rec, **extra}


def test_fit_exponent_is_the_log_log_slope():
    assert fit_exponent([(n, 3.0 * n**2) for n in (1024, 2048, 4096)]) == pytest.approx(2.0)
    assert fit_exponent([(n, 5.0 * n) for n in (1024, 4096, 16384)]) == pytest.approx(1.0)
    assert fit_exponent([(1024, 1.0)]) is None
    assert fit_exponent([(1024, 1.0), (1024, 2.0)]) is None


def test_scaling_exponents_and_crossovers():
    recs = [_time("softmax", n, n**2 / 1e6, mem=n / 100) for n in (1024, 2048, 4096, 8192)]
    recs += [_time("local", n, n / 500, mem=n / 10) for n in (1024, 2048, 4096, 8192)]  # below softmax from 2048
    recs += [_time("fast", n, 0.001, mem=n / 100) for n in (1024, 2048, 4096, 8192)]  # below from the start
    recs += [_time("slow", n, 100.0 + n) for n in (1024, 2048, 4096, 8192)]
    slopes = scaling_exponents(recs, "ms")
    key = (
        "softmax",
        "fwdbwd",
        "float32",
        False,
        1,
        8,
        64,
        "cpu",
        False,
        False,
        0,
        None,
        None,
    )  # core path; 0, None, None: quiet
    assert slopes[(*key, 4096)] == pytest.approx(2.0)
    assert (*key, 1024) not in slopes
    by_time = crossovers(recs, "ms")
    group = ("fwdbwd", "float32", False, 1, 8, 64, "cpu", False, False, 0, None, None)
    assert by_time[("local", *group)] == "2048"  # 1024/500 = 2.05 ms > 1.05 ms; 4.1 ms < 4.2 ms
    assert by_time[("fast", *group)] == "<= 1024"
    assert by_time[("slow", *group)] == "never (to 8192)"
    by_mem = crossovers(recs, "mem_mib")
    assert by_mem[("local", *group)] == "never (to 8192)"
    assert ("slow", *group) not in by_mem  # no memory measured


def test_add_floor_uses_the_measured_peak():
    recs = [
        _time("local", 1024, 10.0, flops=2e9),
        _time("none", 1024, 1.0, flops=None),
        {"kind": "peak", "device": "cpu", "dtype": "float32", "status": "ok", "flops_per_s": 1e12},
    ]
    add_floor(recs)
    assert recs[0]["gflops"] == pytest.approx(200.0)  # 2e9 FLOPs in 10 ms
    assert recs[0]["floor_ms"] == pytest.approx(2.0)  # 2e9 / 1e12 s
    assert recs[0]["x_floor"] == pytest.approx(5.0)
    assert "x_floor" not in recs[1] and "gflops" not in recs[1]


def test_report_shows_failures_errors_and_peers():
    recs = [
        _time("softmax", 1024, 4.0, mem=2.0),
        _time("softmax", 2048, 16.0, mem=4.0),
        _time("local", 1024, 2.0, mem=1.0, first_ms=900.0, compile_ms=898.0, executor="flex"),
        _time("local", 2048, None, status="timeout", reason="over 5 s"),
        {
            "kind": "error",
            "mechanism": "local",
            "seq_len": 256,
            "dist": "unit-variance",
            "exact": True,
            "err_softmax": 0.5,
            "err_fp64": 2e-7,
            "status": "ok",
        },
        {
            "kind": "peer",
            "peer": "local-attention",
            "mechanism": "local",
            "seq_len": 1024,
            "pass": "fwd",
            "status": "ok",
            "peer_ms": 4.0,
            "attnzoo_ms": 1.0,
            "ratio": 0.25,
            "differs": "blocks of 3w",
        },
        {
            "kind": "peer",
            "peer": "linformer",
            "mechanism": "linformer",
            "seq_len": 1024,
            "pass": "fwd",
            "status": "missing",
            "reason": "No module named 'linformer'",
            "differs": "its own E/F",
        },
    ]
    text = format_report(recs, {"torch": "x"}, "attnzoo bench --quick")
    assert "Command: `attnzoo bench --quick`" in text
    assert "| local | 1024 | - | 2.0 | 0.500 | - | 1.0 |" in text
    assert "| local | 2048 | - | timeout |" in text
    assert "| local | 1024 | fwdbwd | flex | 900.0 | 2.0 | 898.0 |" in text
    assert "| time | local | 2048 | fwdbwd | timeout | over 5 s |" in text
    assert "| local (exact) | 256 | 0.500 / 2.00e-07 |" in text
    assert "| local-attention | local | 1024 | fwd | 4.0 | 1.0 | 0.250 |" in text
    assert "Not installed: `linformer` (No module named 'linformer')" in text
    assert "- `local-attention` vs `local`: blocks of 3w" in text


def test_csv_has_every_key_and_no_env():
    recs = [_time("local", 1024, 2.0, options={"window_size": 8}, env={"torch": "x"}), _time("none", 1024, 1.0)]
    rows = list(csv.DictReader(io.StringIO(to_csv(recs))))
    assert len(rows) == 2 and "env" not in rows[0]
    assert rows[0]["options"] == '{"window_size": 8}' and rows[1]["options"] == ""
    assert float(rows[0]["ms"]) == 2.0


def test_failed_peer_records_are_reported():
    """A failed peer case is a row of the peer table (a docs run once crashed here), and carries its pair."""
    from attnzoo.bench.cli import _sweep, _tasks
    from attnzoo.bench.run import failure_records
    from attnzoo.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--peers"])
    preset, mechanisms, options = _sweep(args)
    peer_tasks = [t for g in _tasks(args, preset, mechanisms, options) for t in g.tasks if t["kind"] == "peer"]
    assert peer_tasks and all(t["mechanism"] in mechanisms and t["differs"] for t in peer_tasks)
    failed = failure_records(peer_tasks[0], "failed", "RuntimeError: boom")
    legacy = [{k: v for k, v in r.items() if k not in ("mechanism", "differs")} for r in failed]
    text = format_report(failed + legacy, {"torch": "x"}, "attnzoo bench --quick --peers")
    assert "| sdpa | softmax | 1024 | fwd | failed |" in text and "| sdpa | - | 1024 | fwd | failed |" in text
