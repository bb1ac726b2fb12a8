"""The engine's bookkeeping on one thread and its kernels on the caller's thread count (shared CPU cores)."""

import pytest
import torch

import attnzoo.sparse.executors as executors
import attnzoo.sparse.kernels as kernels
from attnzoo.sparse import sliding_window, sparse_attention
from attnzoo.sparse.threads import bookkeeping, kernel_threads
from attnzoo.testing import make_qkv


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_bookkeeping_runs_on_one_thread_and_kernels_on_the_callers(two_threads):
    cpu = torch.device("cpu")
    with bookkeeping(cpu):
        assert torch.get_num_threads() == 1
        with kernel_threads():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with bookkeeping(cpu):  # nested: unchanged, and kernels still get the outer count
            assert torch.get_num_threads() == 1
            with kernel_threads():
                assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2
    with kernel_threads():  # outside bookkeeping: unchanged
        assert torch.get_num_threads() == 2
    with bookkeeping(torch.device("meta")):  # not the CPU: unchanged
        assert torch.get_num_threads() == 2


def test_thread_count_restored_when_the_block_raises(two_threads):
    with pytest.raises(RuntimeError, match="boom"), bookkeeping(torch.device("cpu")), kernel_threads():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with bookkeeping(torch.device("cpu")):  # and a later block works as before
        assert torch.get_num_threads() == 1


def test_engine_kernels_see_every_thread_and_the_rest_one(two_threads, monkeypatch):
    """Forward and backward of the block-sparse path: each fused kernel call on 2 threads, the engine around it
    on 1; afterwards the caller's count is back."""
    kernel_calls, engine_calls = [], []

    class Aten:  # the fused ops, recording the thread count they run with
        def __getattr__(self, name):
            op = getattr(torch.ops.aten, name)

            def call(*args, **kwargs):
                kernel_calls.append((name, torch.get_num_threads()))
                return op(*args, **kwargs)

            return call

    find_band = executors.find_band
    monkeypatch.setattr(kernels, "_aten", Aten())
    monkeypatch.setattr(
        executors, "find_band", lambda *a: engine_calls.append(torch.get_num_threads()) or find_band(*a)
    )
    q, k, v = make_qkv(1, 2, 1024, 8, seed=0, dtype=torch.float32)
    out, _ = sparse_attention(q, k, v, sliding_window(1024, 16, 16, 64), executor="gather")
    out.sum().backward()
    names = {name for name, _ in kernel_calls}
    assert any(n.endswith("backward") for n in names) and any(not n.endswith("backward") for n in names)
    assert all(threads == 2 for _, threads in kernel_calls), kernel_calls
    assert engine_calls == [1, 1]  # the band lookup of the forward and of the backward
    assert torch.get_num_threads() == 2
