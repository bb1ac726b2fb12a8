"""The engine: every executor and kernel against the dense masked softmax; lse and its merge."""

import pytest
import torch

from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.sparse import dilated_segments, merge_partials, sliding_window, sparse_attention, window_2d
from attnzoo.sparse.kernels import KERNELS, pick_kernel
from attnzoo.testing import assert_close, assert_same_gradients, make_qkv, random_padding_mask

PATTERNS = {
    "sliding": lambda n: sliding_window(n, 9, 4, 16),
    "dilated": lambda n: dilated_segments(n, 32, 3, (0, 1, 2)),
    "tiles": lambda n: window_2d(10, n // 10, 4, 4, 2, 3, True),
}


@pytest.mark.parametrize("pattern_name", list(PATTERNS))
@pytest.mark.parametrize("executor", ["gather", "gather-autograd", "dense"])
@pytest.mark.parametrize("kernel", ["cpu_flash", "math"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_executor_matches_dense_softmax(pattern_name, executor, kernel, causal):
    n = 120
    pattern = PATTERNS[pattern_name](n)
    q, k, v = make_qkv(2, 3, n, 8, seed=11)
    mask = random_padding_mask(2, n, seed=5)
    out, lse = sparse_attention(q, k, v, pattern, mask=mask, causal=causal, executor=executor, kernel=kernel)
    allowed = pattern.to_dense(causal=causal)[None]
    ref = naive_softmax_attention(q, k, v, mask=mask, attn_mask=allowed, causal=causal)
    assert_close("out", ref, out, 1e-10)
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    order = torch.ones(n, n, dtype=torch.bool)
    keep = allowed & mask[:, None, None, :] & (order.tril() if causal else order)
    ref_lse = torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert_close("lse", ref_lse[finite], lse[finite], 1e-10)
    assert_same_gradients(ref, out, (q, k, v), 1e-10)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_gradient_through_lse(kernel):
    """d(lse) flows into q and k exactly (the fused kernel has no lse input; see kernels.py)."""
    q, k, v = make_qkv(1, 2, 40, 8, seed=2)
    pattern = sliding_window(40, 6, 6, 16)
    _, lse = sparse_attention(q, k, v, pattern, kernel=kernel)
    allowed = pattern.to_dense()[None]
    ref = torch.logsumexp(((q @ k.transpose(-1, -2)) * 8**-0.5).masked_fill(~allowed, float("-inf")), -1)
    w = torch.randn_like(lse)
    for name, a, b in zip(
        "qk", torch.autograd.grad((ref * w).sum(), (q, k)), torch.autograd.grad((lse * w).sum(), (q, k)), strict=True
    ):
        assert_close(f"d{name}", a, b, 1e-10)


@pytest.mark.parametrize("zero_row", [False, True], ids=["shifted-output", "column-fallback"])
def test_flash_backward_with_dlse_equals_math(zero_row):
    """The fused backward given d(out) and d(lse) together (the output shifted along dO; a row with dO = 0 and
    d(lse) != 0 falls back to the extra value column) equals the math kernel's, with a mask."""
    gen = torch.Generator().manual_seed(4)
    q, k, v, out_grad = (torch.randn(2, 3, 20, 8, generator=gen, dtype=torch.float64) for _ in range(4))
    bias = torch.zeros(20, 20, dtype=torch.float64).masked_fill(torch.rand(20, 20, generator=gen) < 0.3, float("-inf"))
    bias[:, 0] = 0.0  # every row keeps a key
    out, lse = KERNELS["math"].forward(q, k, v, bias, False, 0.35)
    dlse = torch.randn(2, 3, 20, generator=gen, dtype=torch.float64)
    if zero_row:
        out_grad[1, 2, 5] = 0.0
    expected = KERNELS["math"].backward(out_grad, dlse, q, k, v, out, lse, bias, False, 0.35)
    got = KERNELS["cpu_flash"].backward(out_grad, dlse, q, k, v, out, lse, bias, False, 0.35)
    for name, a, b in zip("qkv", expected, got, strict=True):
        assert_close(f"d{name}", a, b, 1e-10)


def test_merge_partials_of_disjoint_keys_is_full_softmax():
    q, k, v = make_qkv(2, 2, 30, 8, seed=4)
    halves = [torch.arange(30) < 12, torch.arange(30) >= 12]
    outs, lses = [], []
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    for keep in halves:
        outs.append(naive_softmax_attention(q, k, v, attn_mask=keep[None, None, None, :]))
        lses.append(torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1))
    merged, lse = merge_partials(outs, lses)
    full = naive_softmax_attention(q, k, v)
    assert_close("out", full, merged, 1e-12)
    assert_close("lse", torch.logsumexp(scores, -1), lse, 1e-12)
    g_full = torch.autograd.grad(full.sum(), q, retain_graph=True)[0]
    g_merged = torch.autograd.grad(merged.sum(), q)[0]
    assert_close("dq", g_full, g_merged, 1e-10)


def test_merge_partials_all_empty_rows_give_zero():
    out = torch.randn(1, 1, 3, 2)
    empty = torch.full((1, 1, 3), float("-inf"))
    merged, total = merge_partials([out, out], [empty, empty])
    assert merged.abs().max() == 0 and torch.isneginf(total).all()


@pytest.mark.parametrize("detach", [False, True], ids=["exact", "detached-weights"])
def test_merge_partials_gradients(detach):
    """The merge's written-out backward against autograd through its formula (softmax weights of the lses,
    detached or not), with a row one part misses, a row all parts miss (autograd's lse gradients are NaN
    there, the merge's 0), and gradients into out and lse; gradcheck where the weights are kept."""
    gen = torch.Generator().manual_seed(7)
    outs = [torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    lses = [torch.randn(2, 2, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    lses[1][0, 0, 1] = float("-inf")  # part 1 saw no key in this row
    for lse in lses:
        lse[1, 1, 4] = float("-inf")  # no part saw a key: out 0, lse -inf, no gradient
    lses = [lse.requires_grad_() for lse in lses]

    def reference(*tensors):
        stacked = torch.stack(tensors[3:])
        total = torch.logsumexp(stacked, 0)
        weights = torch.exp(stacked - total.nan_to_num(0.0, neginf=0.0)).nan_to_num(0.0)
        weights = weights.detach() if detach else weights
        return sum(w[..., None] * o for w, o in zip(weights, tensors[:3], strict=True)), total

    cot_out, cot_lse = torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64), torch.randn(2, 2, 5, generator=gen)
    results = []
    for fn in (reference, lambda *t: merge_partials(list(t[:3]), list(t[3:]), detach_weights=detach)):
        out, total = fn(*outs, *lses)
        loss = (out * cot_out).sum() + (total.masked_fill(total.isinf(), 0.0) * cot_lse).sum()
        results.append((out, total, torch.autograd.grad(loss, (*outs, *lses))))
    (ref_out, ref_total, ref_grads), (out, total, grads) = results
    assert_close("out", ref_out, out, 1e-14)
    assert torch.equal(ref_total.isinf(), total.isinf()) and out[1, 1, 4].abs().max() == 0
    for i, (a, b) in enumerate(zip(ref_grads, grads, strict=True)):
        assert_close(f"grad {i}", a.nan_to_num(0.0), b, 1e-12)  # autograd: NaN lse gradients where no part saw a key
    if not detach:

        def finite(*t):
            out, total = merge_partials(list(t[:3]), list(t[3:]))
            return out, total.masked_fill(total.isinf(), 0.0)

        assert torch.autograd.gradcheck(finite, (*outs, *lses))


def test_merge_partials_refuses_unpaired_parts():
    out, lse = torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="one lse per output and at least one part, got 2 and 1"):
        merge_partials([out, out], [lse])
    with pytest.raises(ValueError, match="got 0 and 0"):
        merge_partials([], [])


def test_pattern_length_mismatch():
    q, k, v = make_qkv(1, 1, 10, 4)
    with pytest.raises(ValueError, match="was built for N=12, got N=10"):
        sparse_attention(q, k, v, sliding_window(12, 2, 2))


def test_pattern_heads_mismatch():
    q, k, v = make_qkv(1, 2, 16, 4)
    with pytest.raises(ValueError, match="has 3 positions heads; the input has H=2"):
        sparse_attention(q, k, v, dilated_segments(16, 8, 2, (0, 1, 0)))


def test_unknown_executor_and_kernel():
    q, k, v = make_qkv(1, 1, 8, 4)
    with pytest.raises(ValueError, match="unknown executor 'fast'"):
        sparse_attention(q, k, v, sliding_window(8, 1, 1), executor="fast")
    with pytest.raises(ValueError, match="unknown kernel 'cuda'"):
        sparse_attention(q, k, v, sliding_window(8, 1, 1), kernel="cuda")


def test_pick_kernel():
    assert pick_kernel(torch.device("cpu"), torch.float32).name == "cpu_flash"
    assert pick_kernel(torch.device("cpu"), torch.float32, "math").name == "math"


@pytest.mark.compile
def test_flex_inference_matches_gather_on_cpu():
    n = 200
    pattern = sliding_window(n, 20, 20, 128)
    q, k, v = make_qkv(1, 2, n, 16, dtype=torch.float32, requires_grad=False)
    mask = random_padding_mask(1, n, seed=1)
    with torch.no_grad():
        flex, flex_lse = sparse_attention(q, k, v, pattern, mask=mask, executor="flex")
        gather, _ = sparse_attention(q, k, v, pattern, mask=mask, executor="gather")
    assert flex_lse is None  # compiled CPU flex has no lse
    assert_close("out", gather, flex, 1e-5)


def test_flex_refuses_cpu_training():
    q, k, v = make_qkv(1, 1, 16, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="cannot train on CPU"):
        sparse_attention(q, k, v, sliding_window(16, 2, 2), executor="flex")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kernel", ["cpu_flash", "math"])
@pytest.mark.parametrize("union", [False, True], ids=["window", "dilated-union"])
def test_low_precision_forward_backward_close_to_fp32(dtype, kernel, union):
    """Low-precision inputs train (the fused kernel keeps its lse in fp32) and stay close to fp32."""
    n = 70
    patterns = (
        [dilated_segments(n, 16, 1, (0, 0)), dilated_segments(n, 32, 2, (0, 1))]
        if union
        else [sliding_window(n, 8, 8, 16)]
    )
    q, k, v = make_qkv(2, 2, n, 16, dtype=torch.float32, seed=9, requires_grad=False)
    mask = random_padding_mask(2, n, seed=9)
    results = []
    for dt in (dtype, torch.float32):
        inputs = [t.to(dt).requires_grad_() for t in (q, k, v)]
        out, _ = sparse_attention(*inputs, patterns, mask=mask, causal=True, kernel=kernel)
        assert out.dtype == dt
        grads = torch.autograd.grad(out.float().sum(), inputs)
        results.append([out.float(), *(g.float() for g in grads)])
    tol = 0.01 if dtype == torch.float16 else 0.08
    for name, low, ref in zip(("out", "dq", "dk", "dv"), *results, strict=True):
        assert torch.isfinite(low).all(), name
        assert (low - ref).abs().max() < tol, name


@pytest.mark.parametrize("union", [False, True], ids=["window", "dilated-union"])
def test_fused_dropout_gradients_are_exact(union):
    """With a fixed seed the dropped-out attention is a deterministic function: gradcheck it."""
    n = 40
    patterns = (
        [dilated_segments(n, 8, 1, (0, 0)), dilated_segments(n, 16, 2, (0, 1))]
        if union
        else [sliding_window(n, 6, 6, 16)]
    )
    q, k, v = make_qkv(1, 2, n, 4, seed=12)
    mask = random_padding_mask(1, n, seed=12)

    def dropped(q, k, v):
        torch.manual_seed(0)
        return sparse_attention(q, k, v, patterns, mask=mask, causal=True, dropout_p=0.3)[0]

    assert torch.autograd.gradcheck(dropped, (q, k, v), atol=1e-6)
    assert torch.equal(dropped(q, k, v), dropped(q, k, v))  # same seed, same mask
    plain, _ = sparse_attention(q, k, v, patterns, mask=mask, causal=True)
    assert (dropped(q, k, v) - plain).abs().max() > 0.01  # dropout does act


def test_dropout_refused_by_kernels_that_cannot_apply_it():
    q, k, v = make_qkv(1, 1, 16, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="kernel 'cpu_flash' does not apply attention dropout"):
        sparse_attention(q, k, v, sliding_window(16, 2, 2), dropout_p=0.1, kernel="cpu_flash")


def test_attention_with_lse_equals_dense_softmax_with_gradients():
    """The fused call with a broadcast key bias: out, lse (-inf and 0 on a fully masked row) and gradients
    through both against plain softmax algebra."""
    from attnzoo.sparse.dense import attention_with_lse

    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 3, 10, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    hidden = torch.rand(2, 10, 6, generator=gen) < 0.4
    hidden[1, 4] = True  # a query with no visible key
    bias = torch.zeros(2, 1, 10, 6, dtype=torch.float64).masked_fill(hidden[:, None], float("-inf"))
    out, lse = attention_with_lse(q, k, v, bias, 0.3)
    finite = ~hidden.all(-1)[:, None].expand(2, 3, 10)
    scores = (0.3 * q @ k.transpose(-1, -2) + bias).masked_fill(~finite[..., None], 0.0)  # no NaN in the reference
    ref_lse = torch.logsumexp(scores, -1)
    ref = torch.softmax(scores, -1) @ v * finite[..., None]
    assert torch.isneginf(lse[1, :, 4]).all() and not out[1, :, 4].any()
    assert_close("out", ref, out, 1e-12)
    assert_close("lse", ref_lse[finite], lse[finite], 1e-12)
    w_out, w_lse = torch.randn_like(out), torch.randn_like(lse)
    ours = torch.autograd.grad((out * w_out).sum() + (lse.masked_fill(~finite, 0) * w_lse).sum(), (q, k, v))
    theirs = torch.autograd.grad((ref * w_out).sum() + (ref_lse.masked_fill(~finite, 0) * w_lse).sum(), (q, k, v))
    for name, a, b in zip("qkv", theirs, ours, strict=True):
        assert_close(f"d{name}", a, b, 1e-10)
    out, lse = attention_with_lse(q, k[:, :, :0], v[:, :, :0], None, 0.3)  # no key: zeros, -inf (no kernel call)
    assert not out.any() and out.shape == (2, 3, 10, 8) and torch.isneginf(lse).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("padded", [False, True])
def test_dense_fallback_groups_heads_with_equal_masks(padded, causal, monkeypatch):
    """LongNet heads repeat their offsets: when all heads' masks would not fit, the dense fallback runs one call
    per group of equal heads (one mask each). Out, lse and gradients through both equal the block-sparse path's;
    the output stays the buffer the backward reads (sequence-parallel LongNet overwrites it with the merged
    output)."""
    from attnzoo.sparse import dense

    monkeypatch.setattr(dense, "DENSE_BYTES", 30_000)  # 4 heads' fp64 masks: 51 KB (102 KB padded); one: 13-26 KB
    n, heads = 40, 4
    patterns = [dilated_segments(n, 64, 1, (0,) * heads), dilated_segments(n, 64, 2, (0, 1, 0, 1))]
    assert dense._mask_heads(patterns, 2, padded, 8)[1].tolist() == [0, 1, 0, 1]
    assert dense.prefer_dense(patterns, 2, padded, 8)
    q, k, v = make_qkv(2, heads, n, 8, seed=9)
    mask = torch.arange(n)[None] < torch.tensor([[n], [27]]) if padded else None
    results = []
    for executor in ("auto", "gather"):
        out, lse = sparse_attention(q, k, v, patterns, mask=mask, causal=causal, executor=executor)
        finite = torch.isfinite(lse)
        loss = (out * torch.sin(out)).sum() + (lse.masked_fill(~finite, 0) ** 2).sum()
        results.append((out, lse.masked_fill(~finite, 0), *torch.autograd.grad(loss, (q, k, v))))
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), *results, strict=True):
        assert_close(name, b, a, 1e-10)


@pytest.mark.parametrize("first", ["sliding", "dilated"])
def test_union_of_token_order_and_permuted_patterns_with_gradients(first):
    """A union whose parts differ in slot order (a padded token-order window, dilated's permuted slots),
    in both orders (the backward takes the first token-order part's gradients as its totals): out and
    gradients equal one softmax over the multiset union (a key allowed twice counts twice)."""
    n = 120  # not a multiple of the window's 16-token blocks: its slots are padded
    parts = [PATTERNS["sliding"](n), PATTERNS["dilated"](n)]
    parts = parts if first == "sliding" else parts[::-1]
    q, k, v = make_qkv(2, 3, n, 8, seed=13)
    mask = random_padding_mask(2, n, seed=6)
    out, _ = sparse_attention(q, k, v, parts, mask=mask, executor="gather")
    count = sum(p.to_dense(causal=False).double() for p in parts)[None]  # (1, H|1, N, N)
    keep = (count > 0) & mask[:, None, None, :]
    scores = ((q @ k.transpose(-1, -2)) * 8**-0.5 + count.clamp_min(1).log()).masked_fill(~keep, -1e300)
    ref = (torch.softmax(scores, -1) * keep) @ v  # rows that see no key: 0
    assert_close("out", ref, out, 1e-10)
    assert_same_gradients(ref, out, (q, k, v), 1e-9)


@pytest.mark.parametrize("executor", ["gather", "gather-autograd"])
def test_empty_slots_never_overflow_the_backward(executor):
    """Blockwise 3 x 3 tiles on an 8 x 8 grid leave empty slots (the grid padded to 9 x 9); an empty slot holds
    token 0's query but sees the keys of its own tile. With token 0 pointing away from its own keys and towards
    an edge tile's, token 0's lse is far below that slot's scores: the backward must not read token 0's lse
    for the slot (it overflowed to inf * 0 = NaN in dK, dV: an EVA 2D training run went NaN)."""
    pattern = window_2d(8, 8, 3, 3, 0, 0, False)
    u = torch.zeros(16)
    u[0] = 16.0
    q = torch.randn(1, 1, 64, 16) * 0.1
    k = torch.randn(1, 1, 64, 16) * 0.1
    q[0, 0, 0] = u
    grid = torch.arange(64).view(8, 8)
    k[0, 0, grid[:3, :3].flatten()] -= u  # token 0's own tile: scores -64 (scale 1/4)
    k[0, 0, grid[:, 6:].flatten()] += u  # the right edge tiles, which hold empty slots: +64 for token 0's query
    v = torch.randn(1, 1, 64, 16)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, _ = sparse_attention(q, k, v, pattern, executor=executor)
    allowed = pattern.to_dense()[None]
    ref = naive_softmax_attention(q, k, v, attn_mask=allowed)
    assert_close("out", ref, out, 1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for name, a, b in zip("qkv", torch.autograd.grad((ref * g).sum(), (q, k, v)), grads, strict=True):
        assert bool(torch.isfinite(b).all()), f"d{name} not finite"
        assert_close(f"d{name}", a, b, 1e-4)
