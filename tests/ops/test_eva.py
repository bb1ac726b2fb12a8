"""EVA: fast path (sparse engine + chunk scatter) vs the dense joint-softmax reference, fp64, outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.ops.eva import eva_attention, naive_eva_attention
from attnzoo.ops.eva.chunks import contained_chunks, eva_segments, t5_bucket, t5_num_buckets
from attnzoo.ops.eva.naive import naive_t5_bucket
from attnzoo.testing import assert_beats_trivial, clustered_qkv

F64 = torch.float64


def qkv(b, h, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen, dtype=F64).requires_grad_() for _ in range(3)]


def grads(out, inputs, seed=1):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * cot).sum(), inputs, allow_unused=True)


def check(kw, b=2, h=2, n=45, d=8, seed=0, extra=()):
    q, k, v = qkv(b, h, n, d, seed)
    out, ref = eva_attention(q, k, v, **kw), naive_eva_attention(q, k, v, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    inputs = (q, k, v, *extra)
    for g, gr in zip(grads(out, inputs), grads(ref, inputs), strict=True):
        torch.testing.assert_close(g, gr, atol=1e-9, rtol=1e-8)
    return out


CASES = [
    pytest.param(dict(window_size=4, num_landmarks=49), id="w4-L49"),
    pytest.param(dict(window_size=5, num_landmarks=7), id="w5-L7-N-not-multiple"),
    pytest.param(dict(window_size=3, num_landmarks=4, overlap_window=True), id="w3-L4-overlap"),
    pytest.param(dict(window_size=8, num_landmarks=6, compat=True), id="w8-L6-compat"),
    pytest.param(dict(window_size=6, num_landmarks=5, overlap_window=True, compat=True), id="w6-L5-overlap-compat"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("kw", CASES)
def test_matches_naive(kw, masked):
    mask = (torch.arange(45)[None] < torch.tensor([[45], [31]])) if masked else None
    check({**kw, "mask": mask})


@pytest.mark.parametrize("overlap", [False, True])
def test_matches_naive_when_chunks_tile_the_sequence(overlap):
    """No mask and chunks that tile N exactly: the chunk summaries take the reshape path (their proposal
    logits with a written-out key gradient)."""
    check(dict(window_size=4, num_landmarks=6, overlap_window=overlap), n=48)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("overlap", [False, True])
def test_biases_and_learned_maps_match_naive(compat, overlap):
    h, w = 2, 6
    e = max(1, w // 2) if overlap else 0
    gen = torch.Generator().manual_seed(2)
    t5 = torch.randn(t5_num_buckets(w, e), h, generator=gen, dtype=F64).requires_grad_()
    lin = torch.nn.Linear(8, 8).double()

    def keys(q_bar, k_bar):
        k_hat = torch.tanh(lin(k_bar))
        return k_hat, q_bar - k_hat

    mask = torch.arange(45)[None] < torch.tensor([[45], [38]])
    check(
        dict(
            window_size=w,
            num_landmarks=5,
            overlap_window=overlap,
            t5_table=t5,
            chunk_keys=keys,
            mask=mask,
            compat=compat,
        ),
        extra=(t5,),
    )
    rpe = torch.randn(h, w, w + 2 * e, generator=gen, dtype=F64).requires_grad_()
    count = eva_segments(
        mask, 2, 45, window_size=w, num_landmarks=5, extension=e, grid=None, compat=compat, device=torch.device("cpu")
    ).count
    noise = torch.randn(2, h, count, 8, generator=gen, dtype=F64)
    check(
        dict(
            window_size=w, num_landmarks=5, overlap_window=overlap, rpe_table=rpe, noise=noise, mask=mask, compat=compat
        ),
        extra=(rpe,),
    )


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize(
    ("grid", "w", "L", "overlap"), [((8, 12), 4, 6, False), ((12, 8), 4, 4, True), ((6, 6), 3, 4, True)]
)
def test_2d_matches_naive(grid, w, L, overlap, compat):
    n = grid[0] * grid[1]
    e = max(1, w // 2) if overlap else 0
    side = 2 * (w + e - 1) * (w + 2 * e + 1) + 1
    rpe = torch.randn(side, 2, generator=torch.Generator().manual_seed(3), dtype=F64).requires_grad_()
    mask = torch.arange(n)[None] < torch.tensor([[n], [n - 7]])
    check(
        dict(
            window_size=w, num_landmarks=L, overlap_window=overlap, grid=grid, rpe_table=rpe, compat=compat, mask=mask
        ),
        n=n,
        extra=(rpe,),
    )


def test_t5_buckets_match_the_scalar_definition():
    for w, e in [(4, 0), (8, 4), (32, 16), (128, 0), (256, 128)]:
        nb, reach = t5_num_buckets(w, e), w + e
        rel = torch.arange(-(w - 1 + 2 * e), w + 2 * e)  # every key - query (+ e, quirk E7) inside a window
        for bidirectional in (True, False):
            fast = t5_bucket(rel, nb, reach, bidirectional).tolist()
            assert fast == [naive_t5_bucket(int(r), nb, reach, bidirectional) for r in rel]
            assert max(fast) < nb and min(fast) >= 0
    assert t5_num_buckets(4, 0) == 16 and t5_num_buckets(256, 128) == 64 and t5_num_buckets(64, 32) == 48


def test_contained_chunks_leave_out_the_own_block():
    seg = eva_segments(
        None, 1, 16, window_size=4, num_landmarks=4, extension=0, grid=None, compat=False, device=torch.device("cpu")
    )
    inside = contained_chunks(seg, None, 4, 0, None)[0]  # (N, C): chunks of 4 tokens, blocks of 4
    assert torch.equal(inside, torch.eye(4, dtype=torch.bool).repeat_interleave(4, dim=0))
    # with overlap e = 2 the key block [4t - 2, 4t + 6) still holds only chunk t whole
    assert torch.equal(contained_chunks(seg, None, 4, 2, None)[0], inside)
    big = contained_chunks(seg, None, 8, 0, None)[0]
    assert big[0].tolist() == [True, True, False, False] and big[15].tolist() == [False, False, True, True]


def test_double_counting_quirk_only_with_compat():
    """E7: official EVA also attends the summary of chunks its window covers; the default leaves them out."""
    q, k, v = qkv(1, 2, 32, 8, seed=4)
    ours = eva_attention(q, k, v, window_size=8, num_landmarks=4)
    quirk = eva_attention(q, k, v, window_size=8, num_landmarks=4, compat=True)
    assert (ours - quirk).abs().max() > 1e-3
    # with chunks equal to the blocks and no overlap, the default sees each key exactly once: the local
    # window exactly and every other block through one summary; a window as long as N is exact softmax
    exact = eva_attention(q, k, v, window_size=32, num_landmarks=4)
    torch.testing.assert_close(exact, F.scaled_dot_product_attention(q, k, v), atol=1e-12, rtol=0)


def test_padding_invariance_default_and_quirk_e6():
    q, k, v = qkv(1, 2, 40, 8, seed=5)
    mask = torch.arange(40)[None] < 28
    alone = eva_attention(q[:, :, :28], k[:, :, :28], v[:, :, :28], window_size=4, num_landmarks=5)
    padded = eva_attention(q, k, v, mask=mask, window_size=4, num_landmarks=5)
    torch.testing.assert_close(padded[:, :, :28], alone, atol=1e-12, rtol=0)
    q2 = q.detach().clone()
    q2[:, :, 28:] = 30.0
    compat = [eva_attention(a, k, v, mask=mask, window_size=4, num_landmarks=5, compat=True) for a in (q, q2)]
    torch.testing.assert_close(compat[0][:, :, :28], compat[1][:, :, :28], atol=1e-12, rtol=0)  # pad content: none
    compat_alone = eva_attention(q[:, :, :28], k[:, :, :28], v[:, :, :28], window_size=4, num_landmarks=5, compat=True)
    assert (compat[0][:, :, :28] - compat_alone).abs().max() > 1e-3  # pad amount: E6


def test_errors():
    q, k, v = qkv(1, 2, 16, 8)
    with pytest.raises(ValueError, match="eva cannot be causal; use causal_eva"):
        eva_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match=r"t5_table must have shape \(16, 2\)"):
        eva_attention(q, k, v, t5_table=torch.zeros(8, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"T5 bias .* is 1D only"):
        eva_attention(q, k, v, grid=(4, 4), t5_table=torch.zeros(16, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"noise must have shape \(1, 2, 16, 8\)"):
        eva_attention(q, k, v, num_landmarks=49, noise=torch.zeros(1, 2, 3, 8, dtype=F64))
    with pytest.raises(ValueError, match="use_rpe and use_t5_rpe exclude each other"):
        attnzoo.build("eva", 16, 2, use_rpe=True, use_t5_rpe=True)
    with pytest.raises(ValueError, match="option adaptive_proj must be one of"):
        attnzoo.build("eva", 16, 2, adaptive_proj="qk")


@pytest.mark.parametrize(
    ("proj", "expected"),
    [
        (
            "default",
            {"adaptive_mu_q.0.weight", "adaptive_mu_q.1.weight", "adaptive_mu_k.0.bias", "adaptive_mu_k.1.bias"},
        ),
        ("no-ln", {"adaptive_mu_q.0.weight", "adaptive_mu_k.0.weight"}),
        ("none", {"adaptive_mu_k.0.weight", "adaptive_mu_k.1.bias"}),
    ],
)
def test_every_learned_parameter_gets_a_gradient(proj, expected):
    module = attnzoo.build("eva", 16, 2, window_size=4, num_landmarks=4, adaptive_proj=proj, use_t5_rpe=True)
    names = {n for n, _ in module.named_parameters()}
    assert expected <= names and "rel_pos_bias.weight" in names
    assert proj != "none" or not any(n.startswith("adaptive_mu_q") for n in names)
    module(torch.randn(2, 30, 16)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in module.parameters())


def test_training_draws_seeded_and_injectable():
    x = torch.randn(2, 24, 16, dtype=F64)
    module = attnzoo.build("eva", 16, 2, window_size=4, num_landmarks=3, seed=1).double()
    noise = torch.randn(2, 2, 3, 8, dtype=F64)
    q, k, v = module.project(x)
    expected = module.merge(
        eva_attention(q, k, v, window_size=4, num_landmarks=3, chunk_keys=module.chunk_keys, noise=noise)
    )
    torch.testing.assert_close(module(x, draws=[noise]), expected)
    assert (module(x) - module(x)).abs().max() > 1e-8
    module.eval()
    torch.testing.assert_close(module(x), module(x), atol=0, rtol=0)


@pytest.mark.parametrize(("kind", "low", "high"), [("clustered", 0.115, 0.14), ("peaky", 0.016, 0.019)])
def test_approximation_error_regression(kind, low, high):
    """Relative error vs exact softmax at N = 1024 (w = 64, L = 64, eval, no learned maps).

    Measured: clustered (:func:`attnzoo.testing.clustered_qkv`) 0.128, uniform attention 0.786; peaky
    (k = 1.5 (q + 0.3 noise), q x 1.5: the local window holds the peak) 0.0174, uniform attention 0.999.
    (On random unit-variance q, k, without EVA's learned chunk-key maps, a chunk of r = 16 keys enters with
    the weight of about one key and the error, 2.34, exceeds uniform attention's: no test of the method.)
    """
    if kind == "clustered":
        q, k, v = clustered_qkv(1, 4, 1024, 64)
    else:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, 1024, 64, generator=gen, dtype=F64) for _ in range(3))
        k = 1.5 * (q + 0.3 * k)
        q = 1.5 * q
    out = eva_attention(q, k, v, window_size=64, num_landmarks=64)
    err = assert_beats_trivial(kind, out, F.scaled_dot_product_attention(q, k, v), v, factor=0.2)
    assert low < err < high, err
