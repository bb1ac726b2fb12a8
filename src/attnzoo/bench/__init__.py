"""Speed and memory benchmarks of attention mechanisms against sequence length (``attnzoo bench``)."""

from attnzoo.bench.measure import measure_peak_memory, measure_time
from attnzoo.bench.run import BENCH_OPTIONS, BenchCase, environment, run_case
from attnzoo.bench.table import format_table, scaling_exponents

__all__ = [
    "BENCH_OPTIONS",
    "BenchCase",
    "environment",
    "format_table",
    "measure_peak_memory",
    "measure_time",
    "run_case",
    "scaling_exponents",
]
