"""The benchmark on CUDA: CUDA-event timing, allocator peaks, the flex executor's compile time apart,
bf16, and the matmul peak. Skipped without a GPU."""

import pytest
import torch

from attnzoo.bench.measure import matmul_peak, measure_peak_memory, measure_time, memory_method
from attnzoo.bench.run import BenchCase, run_case

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def test_cuda_timing_and_memory():
    a = torch.randn(2048, 2048, device=CUDA)
    t = measure_time(lambda: a @ a, CUDA, repeats=3)
    assert 0 < t.minimum <= t.median < 1.0
    extra = measure_peak_memory(lambda: torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA).fill_(1), CUDA)
    assert extra == 64 * 2**20
    assert memory_method(CUDA).startswith("cuda.max_memory_allocated")
    assert matmul_peak(CUDA, torch.bfloat16) > 1e12  # any data-centre GPU does over 1 TFLOP/s in bf16


@pytest.mark.compile
def test_local_runs_through_flex_with_compile_time_apart():
    case = BenchCase("local", 4096, dtype="bfloat16", device="cuda", options={"window_size": 256}, repeats=3)
    fwd, both = run_case(case)
    assert fwd["status"] == both["status"] == "ok"
    assert fwd["executor"] == "flex"
    assert fwd["compile_ms"] >= 0 and fwd["first_ms"] >= fwd["ms"]
    assert both["mem_mib"] > 0 and fwd["memory_method"].startswith("cuda")


def test_softmax_bf16_causal_case():
    fwd, both = run_case(BenchCase("softmax", 8192, dtype="bfloat16", causal=True, device="cuda", repeats=3))
    assert fwd["status"] == both["status"] == "ok" and fwd["executor"] == "dense-kernel"
    assert both["ms"] > fwd["ms"] > 0
