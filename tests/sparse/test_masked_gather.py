"""The engine's masked-gather path (patterns that declare ``masked_gather``) and patterns with ``copies``.

Checked against a dense multiset reference built from the pattern's own N x N mask (independent of the engine),
and against the generic block-sparse path (``executor="gather"``: virtual copies merged by ``merge_partials``).
"""

import pytest
import torch

import attnzoo.sparse.engine as engine
import attnzoo.sparse.masked_gather as masked_gather
from attnzoo.sparse import sliding_window, sparse_attention
from attnzoo.sparse.structured import lsh_chunks
from attnzoo.testing import assert_close


def lsh_pattern(g, n, chunk, rounds, *, causal=False, seed=0, pad=None):
    """A random Reformer-like pattern: per folded head g, a random order of the R * N virtual tokens
    (``pad`` tokens of each head left out, as padding), cut into chunks that look one chunk back."""
    gen = torch.Generator().manual_seed(seed)
    slots = -(-rounds * n // chunk) * chunk
    orders, lengths = [], []
    for head in range(g):
        keep = torch.arange(rounds * n)
        if pad is not None:
            keep = keep[(keep % n) < n - pad[head]]
        order = keep[torch.randperm(len(keep), generator=gen)]
        lengths.append(len(order))
        orders.append(torch.nn.functional.pad(order, (0, slots - len(order)), value=-1))
    return lsh_chunks(torch.stack(orders), torch.tensor(lengths), chunk, n, rounds, causal=causal)


def multiset_reference(q, k, v, pattern, scale, mask=None, causal=False):
    """``softmax(s QK^T + log C) V`` and its lse, C[i, j] = how many (copy of i, copy of j) slot pairs the
    pattern allows (its dense mask over the R * N virtual tokens, folded onto tokens)."""
    n, rounds = q.shape[-2], pattern.copies
    allowed = pattern.to_dense(causal=causal).to(q.dtype)  # (Hp, RN, RN)
    counts = allowed.view(-1, rounds, n, rounds, n).sum((1, 3))  # (Hp, N, N)
    bias = counts.log()
    if mask is not None:
        bias = bias.masked_fill(~mask[:, None, None, :], float("-inf"))
    scores = scale * q @ k.transpose(-1, -2) + bias
    empty = torch.isinf(scores).all(-1, keepdim=True)  # rows without keys: out 0, lse -inf, no gradient
    lse = torch.logsumexp(scores.masked_fill(empty, 0.0), -1, keepdim=True).masked_fill(empty, 0.0)
    return torch.exp(scores - lse) @ v, lse[..., 0].masked_fill(empty[..., 0], float("-inf"))


def make(g, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, g, n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def grads_of(out, lse, inputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    wo = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    wl = torch.randn(lse.shape, generator=gen, dtype=out.dtype)
    loss = (out * wo).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * wl).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.fixture
def path_calls(monkeypatch):
    seen = {"masked_gather": 0}
    target = engine.masked_gather_attention

    def spy(*args, **kwargs):
        seen["masked_gather"] += 1
        return target(*args, **kwargs)

    monkeypatch.setattr(engine, "masked_gather_attention", spy)
    return seen


@pytest.mark.parametrize(
    ("n", "chunk", "rounds", "causal", "pad"),
    [(96, 8, 1, False, None), (96, 8, 3, False, None), (50, 8, 2, False, (0, 7, 50)), (64, 8, 1, True, None)],
)
def test_masked_gather_matches_dense_multiset_reference(path_calls, n, chunk, rounds, causal, pad):
    g, d = 3, 16
    pattern = lsh_pattern(g, n, chunk, rounds, causal=causal, pad=pad)
    q, k, v = make(g, n, d)
    out, lse = sparse_attention(q, k, v, pattern, scale=0.3)
    assert path_calls["masked_gather"] == 1
    ref_out, ref_lse = multiset_reference(q, k, v, pattern, 0.3)
    assert_close("out", ref_out, out, 1e-12)
    assert_close("lse", ref_lse, lse, 1e-12)  # -inf (a token that sees no key) in the same places
    grads, ref_grads = grads_of(out, lse, (q, k, v)), grads_of(ref_out, ref_lse, (q, k, v))
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", want, got, 1e-11)


def test_window_and_gathered_chunks_both_run_and_agree_with_the_generic_path(monkeypatch):
    """Small chunks per call, so that some calls read their keys as a strided window and others (a head's first
    chunk, which wraps to its last) gather them; the generic plan (virtual copies) gives the same numbers."""
    monkeypatch.setattr(masked_gather, "MASKED_CHUNK_BYTES", 4 * 8 * 16 * 8)  # 4 query blocks per call
    g, n, d, chunk = 2, 64, 16, 8
    pattern = lsh_pattern(g, n, chunk, 2, seed=3)
    slots = masked_gather._Slots.build(pattern, 1, g, n, d * 8, torch.device("cpu"))
    windows = [chunk.window for chunk in slots.chunks()]
    assert any(windows) and not all(windows)
    q, k, v = make(g, n, d, seed=4)
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[0, 5:9] = False
    fast = sparse_attention(q, k, v, pattern, mask=mask)
    generic = sparse_attention(q, k, v, pattern, mask=mask, executor="gather")
    for name, got, want in zip(("out", "lse"), fast, generic, strict=True):
        assert_close(name, want, got, 1e-12)
    for name, got, want in zip("qkv", grads_of(*fast, (q, k, v)), grads_of(*generic, (q, k, v)), strict=True):
        assert_close(f"d{name}", want, got, 1e-11)


def test_copies_are_checked():
    g, n = 2, 32
    pattern = lsh_pattern(g, n, 8, 2)
    q, k, v = make(g, n, 8)
    with pytest.raises(ValueError, match="causal=True is refused for patterns with copies"):
        sparse_attention(q, k, v, pattern, causal=True)
    with pytest.raises(ValueError, match="one copies value"):
        sparse_attention(q, k, v, [pattern, lsh_pattern(g, n, 8, 3)])
    with pytest.raises(ValueError, match="was built for N=64"):
        sparse_attention(*(x[:, :, :16] for x in (q, k, v)), pattern)
    plain = sliding_window(n, 4, 4)
    with pytest.raises(ValueError, match="one copies value"):
        sparse_attention(q, k, v, [plain, pattern])
