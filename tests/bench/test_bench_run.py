"""One benchmark case (:func:`attnzoo.bench.run.run_case`): what ran, the work counted, the whole-layer path."""

import pytest

from attnzoo.bench.compare import case_id
from attnzoo.bench.report import group_key
from attnzoo.bench.run import FWDBWD_FLOP_FACTOR, BenchCase, run_case
from attnzoo.sparse import sliding_window

DILATED = {"segment_lengths": (2048, 4096, 8192), "dilation_rates": (1, 2, 4)}


def _records(mechanism, n, **kwargs):
    case = BenchCase(mechanism, n, heads=2, head_dim=8, repeats=1, memory=False, **kwargs)
    records = run_case(case)
    assert [r["status"] for r in records] == ["ok", "ok"]
    return {r["pass"]: r for r in records}


@pytest.mark.parametrize(
    ("mechanism", "options", "n", "causal", "executor", "entries"),
    [
        # LongNet's branches at N = 256: one fused call over all N^2 pairs, fewer than the 1.31 N^2 they allow
        ("dilated", DILATED, 256, False, "fused-dense", 256 * 256),
        ("dilated", DILATED, 256, True, "fused-dense", 256 * 257 // 2),
        ("local", {"window_size": 256}, 256, False, "fused-dense", 256 * 256),
        # a short window over a longer sequence: the block-sparse plan with its band views
        ("local", {"window_size": 16}, 1024, False, "gather+band", None),
        ("butterfly", {"block_size": 16}, 256, False, "grouped", 256 * 16),  # groups of 16 keys
    ],
)
def test_records_name_what_ran_and_count_its_work(mechanism, options, n, causal, executor, entries):
    records = _records(mechanism, n, causal=causal, options=options)
    fwd, both = records["fwd"], records["fwdbwd"]
    assert fwd["executor"] == both["executor"] == executor
    if entries is not None:  # 2 heads, 4 d flops per score entry
        assert fwd["flops"] == 2 * 4 * 8 * entries
    else:  # the allowed entries (16 keys on each side), fewer than the whole blocks the band computes
        allowed = sum(min(i + 16, n - 1) - max(i - 16, 0) + 1 for i in range(n))
        layout = sliding_window(n, 16, 16).layout
        assert fwd["flops"] == 2 * 4 * 8 * allowed < 2 * 4 * 8 * int(layout.kv_valid.sum()) * layout.block_size**2
    assert both["flops"] == FWDBWD_FLOP_FACTOR * fwd["flops"]


def test_records_of_mechanisms_outside_the_engine():
    soft = _records("softmax", 64)
    assert soft["fwd"]["executor"] == "dense-kernel" and soft["fwd"]["flops"] == 2 * 4 * 8 * 64 * 64


def test_whole_layer_cases_have_their_own_key_and_no_floor():
    layer = _records("local", 64, options={"window_size": 16}, module=True)["fwd"]
    core = _records("local", 64, options={"window_size": 16})["fwd"]
    assert layer["module"] is True and "module" not in core
    assert layer["flops"] is None and core["flops"] > 0
    assert case_id(layer) != case_id(core) and group_key(layer) != group_key(core)
    assert group_key(layer)[:8] == group_key(core)[:8]


def test_a_case_that_cannot_run_is_recorded_as_failed():
    case = BenchCase("local", 64, heads=2, head_dim=8, repeats=1, memory=False, options={"window_size": -1})
    with pytest.raises(ValueError, match="window_size"):
        run_case(case)  # invalid options fail at build, before any record (the CLI validates them first)


def test_block_length_reaches_the_timer(monkeypatch):
    """``block_s`` is each timed block's least length, passed to the timer for every pass."""
    import attnzoo.bench.run as run

    seen = []
    measure = run.measure_time

    def spy(fn, device, **kwargs):
        seen.append(kwargs["min_block_s"])
        return measure(fn, device, **kwargs)

    monkeypatch.setattr(run, "measure_time", spy)
    run_case(BenchCase("softmax", 64, heads=2, head_dim=8, repeats=1, memory=False, block_s=0.05))
    run_case(BenchCase("softmax", 64, heads=2, head_dim=8, repeats=1, memory=False))
    assert seen == [0.05, 0.05, 0.01, 0.01]
