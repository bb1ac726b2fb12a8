"""The FlexAttention executor on CUDA (the ``auto`` choice there for 128-token layouts): outputs, log-sum-exp
and gradients (through the output and through the log-sum-exp) against the gather executor and the dense
masked softmax; low precision; the union of patterns (LongNet) through flex. Skipped without a GPU."""

import pytest
import torch

from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.sparse import dilated_segments, pick_executor, sliding_window, sparse_attention
from attnzoo.testing import assert_close, assert_same_gradients, random_padding_mask

pytestmark = [pytest.mark.cuda, pytest.mark.compile]

CUDA = torch.device("cuda")


def _qkv(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 4, n, 64, generator=gen).to(CUDA, dtype).requires_grad_() for _ in range(3))


def _dense_reference(q, k, v, pattern, mask, causal):
    allowed = pattern.to_dense(causal=causal).to(CUDA)[None]
    out = naive_softmax_attention(q.double(), k.double(), v.double(), mask=mask, attn_mask=allowed, causal=causal)
    scores = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    keep = allowed & mask[:, None, None, :]
    if causal:
        keep = keep & torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool, device=CUDA).tril()
    return out, torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1)


def test_auto_picks_flex_on_cuda_for_128_blocks():
    q = torch.zeros(1, 1, 128, 64, device=CUDA)
    assert pick_executor(q, "auto", [128]) == "flex"
    assert pick_executor(q, "auto", [64]) == "gather"
    assert pick_executor(q, "auto", [128], dropout=True) == "gather"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flex_matches_dense_and_gather_with_lse_gradients(causal):
    n = 600  # not a multiple of 128: the engine pads
    pattern = sliding_window(n, 100, 0 if causal else 100, 128)
    q, k, v = _qkv(n, torch.float32)
    mask = random_padding_mask(2, n, seed=3).to(CUDA)
    out, lse = sparse_attention(q, k, v, pattern, mask=mask, causal=causal, executor="flex")
    assert lse is not None, "flex on CUDA must return the log-sum-exp"
    ref_out, ref_lse = _dense_reference(q, k, v, pattern, mask, causal)
    assert_close("out", ref_out, out, 2e-3)  # TF32 matmuls may run inside the kernel
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), ~finite)
    assert_close("lse", ref_lse[finite], lse[finite], 2e-3)
    g_out, g_lse = torch.randn_like(out), torch.randn_like(lse).masked_fill(~finite, 0.0)
    flex_grads = torch.autograd.grad((out * g_out).sum() + (lse.nan_to_num(0.0, neginf=0.0) * g_lse).sum(), (q, k, v))
    gather_out, gather_lse = sparse_attention(q, k, v, pattern, mask=mask, causal=causal, executor="gather")
    loss = (gather_out * g_out).sum() + (gather_lse.nan_to_num(0.0, neginf=0.0) * g_lse).sum()
    for name, a, b in zip("qkv", torch.autograd.grad(loss, (q, k, v)), flex_grads, strict=True):
        assert_close(f"d{name}", a, b, 5e-3)


def test_flex_lse_gradient_alone_matches_dense():
    n = 256
    pattern = sliding_window(n, 64, 64, 128)
    q, k, v = _qkv(n, torch.float32, seed=1)
    mask = torch.ones(2, n, dtype=torch.bool, device=CUDA)
    _, lse = sparse_attention(q, k, v, pattern, mask=mask, executor="flex")
    _, ref_lse = _dense_reference(q, k, v, pattern, mask, False)
    w = torch.randn_like(lse)
    for name, a, b in zip(
        "qk",
        torch.autograd.grad((ref_lse * w.double()).sum(), (q, k)),
        torch.autograd.grad((lse * w).sum(), (q, k)),
        strict=True,
    ):
        assert_close(f"d{name} through lse", a, b, 5e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flex_low_precision_trains(dtype):
    n = 512
    pattern = sliding_window(n, 128, 128, 128)
    q, k, v = _qkv(n, dtype, seed=2)
    mask = torch.ones(2, n, dtype=torch.bool, device=CUDA)
    out, lse = sparse_attention(q, k, v, pattern, mask=mask, executor="flex")
    assert out.dtype == dtype and lse is not None
    ref_out, _ = _dense_reference(q, k, v, pattern, mask, False)
    assert_close("out", ref_out, out.float(), 3e-2)
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_flex_union_of_dilated_branches_matches_gather():
    n = 1024
    heads = 4
    offsets = tuple(h % 2 for h in range(heads))
    patterns = [dilated_segments(n, 256, 1, (0,) * heads), dilated_segments(n, 512, 2, offsets)]
    q, k, v = _qkv(n, torch.float32, seed=4)
    out, _ = sparse_attention(q, k, v, patterns, executor="flex")
    ref, _ = sparse_attention(q, k, v, patterns, executor="gather")
    assert_close("out", ref, out, 2e-3)
    assert_same_gradients(ref, out, (q, k, v), 5e-3)
