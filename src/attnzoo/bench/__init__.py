"""Efficiency benchmarks of attention mechanisms (``attnzoo bench``): time, memory, FLOP floor,
approximation error and public peers against sequence length."""

from attnzoo.bench.measure import Timing, matmul_peak, measure_peak_memory, measure_time
from attnzoo.bench.run import BenchCase, environment, run_case
from attnzoo.bench.settings import BENCH_SETTINGS, PRESETS, bench_options

__all__ = [
    "BENCH_SETTINGS",
    "PRESETS",
    "BenchCase",
    "Timing",
    "bench_options",
    "environment",
    "matmul_peak",
    "measure_peak_memory",
    "measure_time",
    "run_case",
]
