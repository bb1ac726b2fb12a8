"""``nystrom``: fast path vs dense reference, exact limits, landmarks over real tokens, LRA quirks."""

import pytest
import torch

import attnzoo
from attnzoo.ops.nystrom import iterative_pinv, naive_nystrom_attention, nystrom_attention, segment_ids, segment_means
from attnzoo.ops.nystrom.nystrom import _approximate, conv_skip
from attnzoo.testing import assert_beats_trivial, assert_close, clustered_qkv, make_qkv

F64 = torch.float64


@pytest.mark.parametrize("m", [4, 7, 64])
@pytest.mark.parametrize("compat", ["none", "nystromformer-lra"])
@pytest.mark.parametrize("conv", [False, True], ids=["noconv", "conv"])
def test_matches_naive(m, compat, conv):
    q, k, v = make_qkv(3, 2, 45, 8, seed=1)
    mask = torch.arange(45)[None] < torch.tensor([[45], [30], [5]])
    mask[0, 3] = False  # a pad inside the sequence
    weight = torch.randn(2, 1, 5, 1, dtype=F64, requires_grad=True) if conv else None
    kw = dict(mask=mask, num_landmarks=m, compat=compat, conv_weight=weight)
    out, ref = nystrom_attention(q, k, v, **kw), naive_nystrom_attention(q, k, v, **kw)
    assert_close("out", ref, out, 1e-12)
    inputs = (q, k, v) if weight is None else (q, k, v, weight)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    for g, g_ref in zip(grads, torch.autograd.grad(ref.square().sum(), inputs), strict=True):
        assert_close("grad", g_ref, g, 1e-9)


def test_landmarks_equal_to_length_give_softmax():
    q, k, v = make_qkv(2, 2, 32, 8, seed=2, requires_grad=False)
    mask = torch.arange(32)[None] < torch.tensor([[32], [20]])
    exact = attnzoo.functional.softmax(q, k, v, mask=mask) * mask[:, None, :, None]
    assert_close("m = N", exact, nystrom_attention(q, k, v, mask=mask, num_landmarks=32), 1e-12)
    # the Nystrom product itself with one token per landmark converges to softmax as pinv converges
    real = torch.ones(2, 32, dtype=torch.bool)
    approx = _approximate(q, k, v, real, real, 32, 60, False)
    assert_close("F pinv(A) B V", attnzoo.functional.softmax(q, k, v), approx, 1e-8)


def test_iterative_pinv_converges_to_inverse():
    a = torch.softmax(torch.randn(2, 3, 10, 10, dtype=F64), -1)
    assert_close("pinv", torch.linalg.inv(a), iterative_pinv(a, 40), 1e-8)


def test_segments_follow_nystromformer_split():
    real = torch.ones(1, 10, dtype=torch.bool)
    assert segment_ids(real, 4).tolist() == [[0, 0, 1, 1, 2, 2, 2, 3, 3, 3]]
    real = torch.tensor([[1, 0, 1, 1, 0, 1, 1]], dtype=torch.bool)  # 5 real tokens, 2 landmarks: 2 + 3
    assert segment_ids(real, 2).tolist() == [[0, -1, 0, 1, -1, 1, 1]]


def test_padding_changes_no_real_row_and_equals_unpadded():
    q, k, v = make_qkv(1, 2, 200, 8, seed=3, requires_grad=False)
    mask = torch.arange(200)[None] < 150
    out = nystrom_attention(q, k, v, mask=mask, num_landmarks=16)
    alone = nystrom_attention(q[:, :, :150], k[:, :, :150], v[:, :, :150], num_landmarks=16)
    assert_close("unpadded", alone, out[:, :, :150], 1e-12)
    junk = [t.clone() for t in (q, k, v)]
    for t in junk:
        t[:, :, 150:] = 100.0
    assert_close("pad content", out, nystrom_attention(*junk, mask=mask, num_landmarks=16), 1e-12)


def test_short_sequences_in_a_batch_get_exact_attention():
    q, k, v = make_qkv(2, 2, 100, 8, seed=4, requires_grad=False)
    mask = torch.arange(100)[None] < torch.tensor([[100], [10]])
    out = nystrom_attention(q, k, v, mask=mask, num_landmarks=16)
    exact = attnzoo.functional.softmax(q[1:, :, :10], k[1:, :, :10], v[1:, :, :10])
    assert_close("short item", exact, out[1:, :, :10], 1e-12)


@pytest.mark.parametrize("compat", ["none", "nystromformer-lra"])
def test_cross_attention_matches_naive_with_query_and_key_masks(compat):
    """N queries, S keys: landmarks of q over the real queries, of k over the real keys, separately."""
    q, _, _ = make_qkv(4, 2, 30, 8, seed=6)
    _, k, v = make_qkv(4, 2, 45, 8, seed=7)
    query_mask = torch.arange(30)[None] < torch.tensor([[30], [20], [4], [30]])  # row 2: <= m real queries
    mask = torch.arange(45)[None] < torch.tensor([[45], [33], [45], [5]])  # row 3: <= m real keys
    query_mask[0, 7] = mask[1, 2] = False  # pads inside the sequences
    kw = dict(mask=mask, query_mask=query_mask, num_landmarks=6, compat=compat)
    out, ref = nystrom_attention(q, k, v, **kw), naive_nystrom_attention(q, k, v, **kw)
    assert_close("cross out", ref, out, 1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, g_ref in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)), strict=True):
        assert_close("cross grad", g_ref, g, 1e-9)
    if compat == "none":  # rows with few real queries or keys are exact softmax over the real keys
        exact = attnzoo.functional.softmax(q, k, v, mask=mask) * query_mask[:, None, :, None]
        assert_close("few rows", exact[2:], out[2:], 1e-12)
        assert not torch.allclose(exact[:2], out[:2], atol=1e-3)  # the others are approximated
        # the query landmarks follow the query mask: changing a padded query changes nothing
        q2 = q.detach().clone()
        q2[1, :, 25] = 50.0
        assert_close("pad query", out, nystrom_attention(q2, k, v, **kw), 1e-12)


def test_cross_attention_defaults_and_errors():
    q, k, v = make_qkv(1, 2, 12, 8, seed=8, requires_grad=False)
    mask = torch.arange(12)[None] < 9
    # self-attention: the query mask defaults to the key mask; with N != S every query is real
    assert_close(
        "default",
        nystrom_attention(q, k, v, mask=mask, query_mask=mask, num_landmarks=2),
        nystrom_attention(q, k, v, mask=mask, num_landmarks=2),
        1e-12,
    )
    with pytest.raises(ValueError, match=r"conv skip adds V to the query rows, so it needs N == S; got N=5, S=12"):
        nystrom_attention(q[:, :, :5], k, v, conv_weight=torch.zeros(2, 1, 3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\) = \(1, 5\)"):
        nystrom_attention(q[:, :, :5], k, v, query_mask=mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S\) = \(1, 12\)"):
        nystrom_attention(q, k, v, mask=mask[:, :5])


def test_lra_pinv_init_couples_the_batch_and_default_does_not():
    q, k, v = make_qkv(2, 2, 64, 8, seed=5, requires_grad=False)
    scaled = [torch.cat([t[:1], t[1:] * 3]) for t in (q, k, v)]
    for compat, coupled in (("nystromformer-lra", True), ("none", False)):
        one = nystrom_attention(q, k, v, num_landmarks=8, compat=compat)[0]
        other = nystrom_attention(*scaled, num_landmarks=8, compat=compat)[0]
        assert torch.allclose(one, other, atol=1e-12) != coupled, compat


def test_conv_skip_is_trained_and_options_checked():
    module = attnzoo.build("nystrom", 16, 2, num_landmarks=4, conv_kernel=5)
    assert tuple(module.conv.weight.shape) == (2, 1, 5, 1)
    module(torch.randn(2, 30, 16)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        attnzoo.build("nystrom", 16, 2, conv_kernel=4)
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build("nystrom", 16, 2, causal=True)


@pytest.mark.parametrize(("landmarks", "low", "high"), [(64, 0.005, 0.0065), (48, 0.008, 0.0098)])
def test_approximation_regression_n1024(landmarks, low, high):
    """Clustered fp32 input (:func:`attnzoo.testing.clustered_qkv`: runs of 64 tokens, d = 64, H = 2, 6 pinv
    iterations): relative error vs exact softmax measured 0.0058 with 64 landmarks (segments inside the runs)
    and 0.0088 with 48 (segments straddling runs); uniform attention 0.832, zero 1. (On q, k ~ N(0, 1/4)
    uniform attention was as good, 0.234 vs 0.233.)"""
    q, k, v = clustered_qkv(1, 2, 1024, 64, dtype=torch.float32)
    exact = attnzoo.functional.softmax(q, k, v)
    out = nystrom_attention(q, k, v, num_landmarks=landmarks)
    err = assert_beats_trivial(f"{landmarks} landmarks", out, exact, v, factor=0.05)
    assert low < err < high, err


@pytest.mark.parametrize("n", [64, 100, 127, 129])
def test_unmasked_segment_means_equal_the_masked_path_and_nystromformer_split(n):
    m = 16
    x = torch.randn(2, 3, n, 5, dtype=torch.float64)
    real = torch.ones(2, n, dtype=torch.bool)
    fast = segment_means(x, None, m)
    torch.testing.assert_close(fast, segment_means(x, real, m), rtol=1e-12, atol=1e-12)
    ids = segment_ids(real, m)[0]
    manual = torch.stack([x[:, :, ids == j].mean(2) for j in range(m)], dim=2)
    torch.testing.assert_close(fast, manual, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="N >= num_landmarks"):
        segment_means(x[:, :, :10], None, m)


@pytest.mark.parametrize("dv", [8, 6], ids=["flash", "math"])
def test_unmasked_gradients_match_naive_in_the_inputs_layout(dv):
    """No mask (contiguous segments of unequal sizes, 45 = 4 x 6 + 3 x 7), projection-style
    inputs ``(B, N, H, d)`` viewed as ``(B, H, N, d)``; dv != d runs the math kernel."""
    gen = torch.Generator().manual_seed(11)
    q, k = (torch.randn(2, 45, 3, 8, generator=gen, dtype=F64).transpose(1, 2).requires_grad_() for _ in range(2))
    v = torch.randn(2, 45, 3, dv, generator=gen, dtype=F64).transpose(1, 2).requires_grad_()
    out, ref = nystrom_attention(q, k, v, num_landmarks=7), naive_nystrom_attention(q, k, v, num_landmarks=7)
    assert_close("out", ref, out, 1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, g_ref in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)), strict=True):
        assert_close("grad", g_ref, g, 1e-9)
    assert grads[0].stride() == q.stride() and grads[1].stride() == k.stride()  # gradients in the inputs' layout


@pytest.mark.parametrize(("n", "m", "masked"), [(64, 8, False), (70, 8, False), (70, 8, True), (10, 16, True)])
def test_segment_means_gradient_helper_equals_autograd(n, m, masked):
    from attnzoo.ops.nystrom.landmarks import add_segment_means_grad

    gen = torch.Generator().manual_seed(n + m)
    x = torch.randn(2, 3, n, 4, generator=gen, dtype=F64, requires_grad=True)
    real = torch.rand(2, n, generator=gen) > 0.3 if masked else None
    grad = torch.randn(2, 3, m, 4, generator=gen, dtype=F64)
    (expected,) = torch.autograd.grad(segment_means(x, real, m), x, grad)
    base = torch.randn(2, 3, n, 4, generator=gen, dtype=F64)
    out = torch.empty(2, n, 3, 4, dtype=F64).transpose(1, 2)  # any layout
    assert add_segment_means_grad(base, grad, real, out) is out
    torch.testing.assert_close(out, base + expected, rtol=1e-12, atol=1e-12)


def _shifted_sum(v, weight, mask):
    """Reference of the conv skip: ``out[n] = sum_t w[t] v[n + t - K // 2]`` over the real, in-range tokens."""
    v = v * mask[:, None, :, None].to(v.dtype)
    kernel, half, n = weight.shape[2], weight.shape[2] // 2, v.shape[2]
    out = torch.zeros_like(v)
    for t in range(kernel):
        shift = t - half
        lo, hi = max(0, -shift), min(n, n - shift)
        out[:, :, lo:hi] += weight[None, :, 0, t, 0, None, None] * v[:, :, lo + shift : hi + shift]
    return out


def test_conv_skip_equals_the_shifted_sum_with_batch_folded_weights():
    torch.manual_seed(0)
    v = torch.randn(3, 2, 40, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 7, 1, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    grad = torch.randn(3, 2, 40, 5, dtype=torch.float64)
    ours, ref = conv_skip(v, weight, mask), _shifted_sum(v, weight, mask)
    assert torch.allclose(ours, ref)
    (ours * grad).sum().backward()
    got = (v.grad.clone(), weight.grad.clone())
    v.grad = weight.grad = None
    (ref * grad).sum().backward()
    assert torch.allclose(got[0], v.grad) and torch.allclose(got[1], weight.grad)  # weight: summed over batch
    assert conv_skip(torch.randn(0, 2, 40, 5), weight.detach().float(), None).shape == (0, 2, 40, 5)
