"""Timing, memory and matmul-peak measurement."""

import time
from types import SimpleNamespace

import pytest
import torch

from attnzoo.bench import measure
from attnzoo.bench.measure import (
    MEMORY_REGIME,
    TIME_REGIME,
    matmul_peak,
    measure_peak_memory,
    measure_time,
    memory_method,
    set_time_regime,
)

CPU = torch.device("cpu")


def test_measure_time_reports_median_spread_and_first_call(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=time.sleep))
    # call durations in ms: a 20 ms first call (a compilation), a 4 ms warm-up, then 5 blocks of 3 calls
    durations = iter([20, 4] + [ms for ms in (4, 5, 6, 4, 8) for _ in range(3)])

    def fn():
        clock[0] += next(durations) / 1e3

    t = measure_time(fn, CPU, repeats=5, warmup=1, min_block_s=0.01)
    assert t.number == 3  # ceil(10 ms / 4 ms) calls per block
    assert next(durations, None) is None  # no hidden warm-up calls (torch's Timer.timeit adds 2 a block)
    assert t.first == pytest.approx(0.020)
    assert t.median == pytest.approx(0.005) and t.minimum == pytest.approx(0.004)
    assert t.iqr == pytest.approx(0.002)  # quartiles of 4, 4, 5, 6, 8 ms: 4 and 6
    assert t.repeats == 5


def test_measure_time_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        measure_time(lambda: None, CPU, repeats=0)


def test_peak_memory_sees_a_64_mib_temporary_and_not_a_small_one():
    def big():
        x = torch.ones(16 * 2**20)  # 64 MiB, written so its pages are resident
        time.sleep(0.02)  # held for 100 poll intervals: a loaded machine may delay the poller past a short life
        return float(x[-1])

    extra = measure_peak_memory(big, CPU)
    assert extra is not None and 60 * 2**20 <= extra <= 90 * 2**20
    small = measure_peak_memory(lambda: torch.ones(1024).sum(), CPU)
    assert small is not None and small < 8 * 2**20
    assert memory_method(CPU) == f"polled RSS, {MEMORY_REGIME}"


def test_time_regime_and_matmul_peak():
    assert set_time_regime() == TIME_REGIME
    peak = matmul_peak(CPU, torch.float32, sizes=(128,))
    assert 1e7 < peak < 1e14  # FLOP/s: even a loaded 2-core VM does over 10 MFLOP/s
