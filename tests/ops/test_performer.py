"""``performer``: fast path vs dense reference, estimator properties, causal prefixes, redraw policy."""

import math

import pytest
import torch

import attnzoo
from attnzoo.ops.linear.kernel import causal_feature_step, causal_feature_sums, empty_sums
from attnzoo.ops.performer import draw_projection, favor_log_features, naive_performer_attention, performer_attention
from attnzoo.ops.performer.favor import favor_feature_maps
from attnzoo.ops.performer.features import stabilised_exp
from attnzoo.testing import assert_beats_trivial, assert_close, assert_same_gradients, clustered_qkv, make_qkv

F64 = torch.float64
SETTINGS = [  # (compat, feature_eps, kernel)
    ("none", 0.0, "softmax"),
    ("none", 1e-4, "softmax"),
    ("none", 0.0, "relu"),
    ("efficient-attention", 1e-4, "softmax"),
    ("nystromformer-lra", 1e-4 / 16, "softmax"),
]


def _grads(out, inputs):
    return torch.autograd.grad(out.square().sum(), inputs)


CASES = [
    (*setting, causal)
    for setting in SETTINGS
    for causal in (False, True)
    if not causal or (setting[0] == "none" and not setting[1])
]  # causal refuses eps / compat (below)


@pytest.mark.parametrize(
    ("compat", "eps", "kernel", "causal"),
    CASES,
    ids=[f"{c}-{e}-{k}-{'causal' if z else 'full'}" for c, e, k, z in CASES],
)
@pytest.mark.parametrize("chunk", [None, 7])
def test_matches_naive(compat, eps, kernel, causal, chunk):
    q, k, v = make_qkv(2, 3, 45, 8, seed=1)
    mask = torch.arange(45)[None] < torch.tensor([[45], [29]])
    kw = dict(mask=mask, causal=causal, compat=compat, feature_eps=eps, kernel=kernel, num_features=20, seed=3)
    out, ref = performer_attention(q, k, v, chunk_size=chunk, **kw), naive_performer_attention(q, k, v, **kw)
    assert_close("out", ref, out, 1e-12)
    for name, g_out, g_ref in zip("qkv", _grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        assert_close(f"d{name}", g_ref, g_out, 1e-10)


def test_cross_attention_and_injected_projection():
    q, _, _ = make_qkv(1, 2, 9, 8, seed=2)
    _, k, v = make_qkv(1, 2, 30, 8, seed=3)
    proj = draw_projection(2, 12, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = performer_attention(q, k, v, projection=proj)
    assert out.shape == (1, 2, 9, 8)
    assert_close("cross", naive_performer_attention(q, k, v, projection=proj), out, 1e-12)
    with pytest.raises(ValueError, match=r"projection must have shape \(H, m, d\) = \(2, m, 8\)"):
        performer_attention(q, k, v, projection=proj[:1])


def test_estimator_is_unbiased_and_error_shrinks_like_inverse_sqrt_m():
    gen = torch.Generator().manual_seed(0)
    d, draws = 16, 400
    x = torch.randn(2, 1, 3, d, generator=gen, dtype=F64) * 0.5  # (q or k, 1, pairs, d)
    scale = d**-0.5
    exact = torch.exp(scale * (x[0, 0] * x[1, 0]).sum(-1))  # (pairs,)
    spreads = {}
    for m in (16, 64, 256):
        proj = draw_projection(draws, m, d, generator=gen, dtype=F64)  # 400 independent draws ("heads")
        log_q = favor_log_features(x[0].expand(draws, -1, -1)[None], proj, scale)[0]  # (draws, pairs, m)
        log_k = favor_log_features(x[1].expand(draws, -1, -1)[None], proj, scale)[0]
        est = (log_q + log_k).exp().sum(-1)  # (draws, pairs): one estimate of exp(s q.k) per draw
        mean, spread = est.mean(0), est.std(0)
        assert ((mean - exact).abs() <= 5 * spread / math.sqrt(draws)).all(), (m, mean, exact)
        spreads[m] = (spread / exact).mean().item()
    # standard deviation ~ 1/sqrt(m): x4 features -> /2 (within sampling noise)
    assert 1.5 < spreads[16] / spreads[64] < 2.7 and 1.5 < spreads[64] / spreads[256] < 2.7, spreads


@pytest.mark.parametrize("dim", [2, 8])
def test_orthogonal_rows_are_marginally_sign_symmetric(dim):
    """Haar blocks: every coordinate of every row is negative in about half of 4096 draws (binomial sd 0.008).
    The raw Q of ``torch.linalg.qr`` (``raw_qr``, the official draw) has row 0's first coordinate negative always."""
    gen = torch.Generator().manual_seed(0)
    proj = draw_projection(4096, dim, dim, generator=gen, dtype=F64)  # 4096 draws of one block
    negative = (proj < 0).to(F64).mean(0)  # (row, coordinate)
    assert (negative - 0.5).abs().max() < 0.04, negative
    raw = draw_projection(4096, dim, dim, raw_qr=True, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert (raw[:, 0, 0] < 0).all()
    norms = proj.norm(dim=-1) / raw.norm(dim=-1)  # same chi norms, only directions' signs change
    assert_close("norms", torch.ones_like(norms), norms, 1e-12)


def test_kernel_error_keeps_falling_like_inverse_sqrt_m_with_the_corrected_draw():
    """Relative RMSE of ``phi(q).phi(k)`` vs ``exp(s q.k)`` over 64 x 64 pairs, d = 16, 4 draws each:
    measured 0.113 (m = 512) -> 0.028 (m = 8192) corrected, 0.116 -> 0.059 with the raw (biased) QR draw."""
    d = 16
    x = torch.randn(2, 1, 1, 64, d, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.5
    scale = d**-0.5
    exact = torch.exp(scale * x[0, 0, 0] @ x[1, 0, 0].T)

    def rmse(m, raw_qr):
        errs = []
        for seed in range(4):
            w = draw_projection(1, m, d, raw_qr=raw_qr, generator=torch.Generator().manual_seed(seed), dtype=F64)
            est = favor_log_features(x[0], w, scale).exp()[0, 0] @ favor_log_features(x[1], w, scale).exp()[0, 0].T
            errs.append(((est - exact) / exact).square().mean())
        return torch.stack(errs).mean().sqrt().item()

    small, large = rmse(512, False), rmse(8192, False)
    assert large < 0.04 and small / large > 3.0, (small, large)  # ideal 1/sqrt(m): x4
    assert rmse(8192, True) > 0.05  # the official draw stops converging


def test_compat_draws_the_official_raw_qr():
    """``compat`` (and so ``from_official``) draws the raw QR; the default the corrected one."""
    for compat, raw_qr in (("none", False), ("efficient-attention", True), ("nystromformer-lra", True)):
        module = attnzoo.build("performer", 16, 2, num_features=8, seed=5, compat=compat)
        gen = torch.Generator().manual_seed(5)
        assert torch.equal(module.projection, draw_projection(2, 8, 8, raw_qr=raw_qr, generator=gen)), compat
    torch.manual_seed(0)
    args = {"approx_attn_dim": 64, "sample_scheme": "fixed"}  # 2 heads x 8 blocks of d = 8 orthogonal rows
    official = attnzoo.from_official("efficient-attention", "performer", dim=16, num_heads=2, args=args)
    assert (official.projection[:, ::8, 0] < 0).all()  # raw QR: every block's row 0 (corrected: p = 2^-16)
    q, k, v = make_qkv(1, 2, 6, 8, requires_grad=False)
    for compat in ("none", "efficient-attention"):
        raw = draw_projection(2, 8, 8, raw_qr=compat != "none", generator=torch.Generator().manual_seed(3), dtype=F64)
        kw = dict(compat=compat, num_features=8, seed=3)
        assert torch.equal(performer_attention(q, k, v, **kw), performer_attention(q, k, v, projection=raw, **kw))


def test_causal_equals_noncausal_on_every_prefix():
    q, k, v = make_qkv(1, 2, 300, 8, seed=4, requires_grad=False)
    out = performer_attention(q, k, v, causal=True, num_features=32)
    for p in (1, 127, 128, 129, 257, 300):
        prefix = performer_attention(q[:, :, :p], k[:, :, :p], v[:, :, :p], num_features=32)
        assert_close(f"prefix {p}", prefix[:, :, -1], out[:, :, p - 1], 1e-12)


@pytest.mark.parametrize("chunk", [None, 16])
def test_causal_rows_ignore_a_dominant_later_key_in_fp32(chunk):
    """Key j scaled 40x: its log-features lie ~100 above the others' (fp32 underflow). Rows < j do not move at
    all, and every row matches the fp64 reference to 1e-6. Before (one stabiliser per 128-token chunk, later
    keys included) rows 0-6 moved by 1.7 when only k7 changed."""
    q, k, v = make_qkv(2, 2, 40, 8, dtype=torch.float32, seed=0, requires_grad=False)
    kw = dict(causal=True, num_features=32, seed=1)
    base = performer_attention(q, k, v, chunk_size=chunk, **kw)
    for j in (7, 20, 33):  # inside the first chunk, and after one or two chunk boundaries with chunk 16
        k_j = k.clone()
        k_j[:, :, j] *= 40.0
        out = performer_attention(q, k_j, v, chunk_size=chunk, **kw)
        assert torch.equal(out[:, :, :j], base[:, :, :j]), (out - base)[:, :, :j].abs().max()
        ref = naive_performer_attention(q.double(), k_j.double(), v.double(), **kw)
        assert (out.double() - ref).abs().max() < 1e-6


def _large_logits(kind, n):
    """fp32 ``q, k, v`` ``(1, 2, n, 16)``: ``"random"`` -- 4 x N(0, 1) q and k; ``"anti"`` -- q ~ 10 (u + 0.3 e) and
    k ~ -10 (u + 0.3 e') for one direction u, so every q.k is very negative and no feature is large for both."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, 2, n, 16)
    if kind == "random":
        q, k = 4 * torch.randn(shape, generator=gen), 4 * torch.randn(shape, generator=gen)
    else:
        u = torch.randn(16, generator=gen)
        q = 10 * (u + 0.3 * torch.randn(shape, generator=gen))
        k = -10 * (u + 0.3 * torch.randn(shape, generator=gen))
    return q, k, torch.randn(shape, generator=gen)


def _dense_causal_favor(q, k, v, projection, mask):
    """Causal FAVOR+ written out in float64 with the same features: ``phi = exp(favor_log_features)``,
    ``A = phi(Q) phi(K)^T`` (j <= i, real keys), ``A v / A 1``; ``(B, H, N, dv)``."""
    phi_q, phi_k = (favor_log_features(x.double(), projection.double(), q.shape[-1] ** -0.5).exp() for x in (q, k))
    a = (phi_q @ phi_k.transpose(-1, -2)).tril() * mask[:, None, None, :]
    return a @ v.double() / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("chunk", [None, 48])
@pytest.mark.parametrize(("kind", "n"), [("random", 256), ("anti", 128)])
def test_causal_gradients_stay_finite_for_large_logits_in_fp32(kind, n, chunk):
    """fp32 causal FAVOR+ with large logits (d = 16): output and q, k, v gradients equal the float64 dense
    reference (relative RMS <= 5e-5; measured <= 4.7e-6). Before, row i's normaliser fell to ~1e-38
    (the query features carried exp(-s|q|^2 / 2) and the largest query and key features were on different
    random features): the output was off by 6 % ("random") and q/k gradients were NaN (inf * 0 in the
    per-row key factors). Dropping the query norm term (a row constant) alone fixes "random" but not "anti",
    the per-row stabiliser alone fixes neither ("random" keeps NaN dq: its factor is capped at e^60)."""
    q, k, v = (x.requires_grad_() for x in _large_logits(kind, n))
    proj = draw_projection(2, 256, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(n)[None] < n - 20
    out = performer_attention(q, k, v, mask=mask, causal=True, projection=proj, chunk_size=chunk)
    ref = _dense_causal_favor(q, k, v, proj, mask)
    assert_close("out", ref, out, 1e-5)
    torch.manual_seed(0)
    assert_same_gradients(ref, out, (q, k, v), 5e-5)


def test_causal_decoding_equals_the_forward_for_large_logits():
    """The running sums of a 100-token prompt, then 28 decoding steps (fp32, 4 x N(0, 1) q and k), give the
    causal forward's rows to 1e-6: the per-row stabiliser is a ratio-preserving factor in both."""
    q, k, v = _large_logits("random", 128)
    proj = draw_projection(2, 256, 16, generator=torch.Generator().manual_seed(1))
    query_features, key_features = favor_feature_maps(proj, scale=0.25, per_key=True)
    sums = empty_sums(1, 2, 256, 16, scaled=True, dtype=torch.float32, device=q.device)
    sums = causal_feature_sums(k[:, :, :100], v[:, :, :100], key_features=key_features, mask=None, sums=sums)
    steps = []
    for t in range(100, 128):
        token = (x[:, :, t : t + 1] for x in (q, k, v))
        out, sums = causal_feature_step(*token, query_features=query_features, key_features=key_features, sums=sums)
        steps.append(out)
    forward = performer_attention(q, k, v, causal=True, projection=proj)
    assert_close("decode", forward[:, :, 100:], torch.cat(steps, dim=-2), 1e-6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(feature_eps=1e-4), "causal performer needs feature_eps=0"),
        (dict(compat="efficient-attention"), "causal performer needs feature_eps=0 and compat='none'"),
    ],
)
def test_causal_refuses_future_dependent_settings(kw, match):
    q, k, v = make_qkv(1, 1, 8, 4, requires_grad=False)
    with pytest.raises(ValueError, match=match):
        performer_attention(q, k, v, causal=True, **kw)
    with pytest.raises(ValueError, match=match):
        attnzoo.build("performer", 8, 2, causal=True, **kw)


def test_redraw_policy_and_seed():
    a = attnzoo.build("performer", 16, 2, num_features=8, seed=5)
    b = attnzoo.build("performer", 16, 2, num_features=8, seed=5)
    assert a.projection.shape == (2, 8, 8) and torch.equal(a.projection, b.projection)
    x = torch.randn(1, 10, 16)
    b.load_state_dict(a.state_dict())
    fixed = a(x)
    assert torch.equal(fixed, a(x))  # "fixed": training forwards reuse the buffer
    before = a.projection.clone()
    a.redraw()
    assert not torch.equal(before, a.projection) and not torch.allclose(fixed, a(x))
    a.redraw(before)
    assert torch.equal(a.projection, before) and torch.equal(fixed, a(x))
    with pytest.raises(ValueError, match=r"projection must have shape \(2, 8, 8\)"):
        a.redraw(before[:1])
    step = attnzoo.build("performer", 16, 2, num_features=8, seed=5, redraw="step")
    step.load_state_dict(a.state_dict())
    first, second = step(x), step(x)
    assert not torch.allclose(first, second)  # a fresh draw per training forward
    step.eval()
    assert torch.equal(step(x), step(x)) and torch.allclose(step(x), fixed.detach(), atol=1e-6)


def test_gradients_reach_weights_not_the_projection():
    module = attnzoo.build("performer", 16, 2, num_features=8)
    module(torch.randn(2, 12, 16)).sum().backward()
    assert {n for n, p in module.named_parameters()} == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert "projection" in module.state_dict() and not module.projection.requires_grad


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (dict(num_features=0), ValueError, "num_features must be >= 1"),
        (dict(kernel="cos"), ValueError, "kernel must be one of"),
        (dict(redraw="always"), ValueError, "redraw must be one of"),
        (dict(feature_eps=-1.0), ValueError, "feature_eps must be >= 0"),
        (dict(compat="lra"), ValueError, "compat must be one of"),
        (dict(orthogonal="yes"), TypeError, "orthogonal must be a bool"),
    ],
)
def test_bad_options(bad, error, match):
    with pytest.raises(error, match=match):
        attnzoo.build("performer", 16, 2, **bad)


def test_approximation_regression_n1024():
    """Clustered fp32 input (:func:`attnzoo.testing.clustered_qkv`, d = 64, H = 2, 124 padded keys): relative
    error vs exact softmax measured 0.324 at m = 256 and 0.120 at m = 1024; uniform attention 0.833, zero 1."""
    q, k, v = clustered_qkv(1, 2, 1024, 64, dtype=torch.float32)
    mask = torch.arange(1024)[None] < 900
    exact = attnzoo.functional.softmax(q, k, v, mask=mask)
    errors = [
        assert_beats_trivial(f"m={m}", performer_attention(q, k, v, mask=mask, num_features=m), exact, v, mask=mask)
        for m in (256, 1024)
    ]
    assert 0.28 < errors[0] < 0.36 and 0.1 < errors[1] < 0.14, errors


def _plain_stabilised_exp(p, extra, over_tokens, through_max, keep):
    """The expression :func:`stabilised_exp` fuses, left to autograd (``torch.amax``'s gradient)."""
    candidates = p if through_max else p.detach()
    if keep is not None:
        candidates = candidates.masked_fill(~keep, -math.inf)
    top = candidates.amax(dim=(-2, -1) if over_tokens else -1, keepdim=True)
    out = (p - (top.masked_fill(top == -math.inf, 0.0) + extra)).exp()
    return (out if keep is None else out.masked_fill(~keep, 0.0)), top


@pytest.mark.parametrize("over_tokens", [False, True])
@pytest.mark.parametrize("through_max", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_stabilised_exp_matches_autograd_of_the_plain_expression(over_tokens, through_max, masked):
    torch.manual_seed(0)
    p = torch.randn(2, 3, 10, 7, dtype=torch.float64, requires_grad=True)
    extra = torch.randn(2, 3, 10, 1, dtype=torch.float64, requires_grad=True)
    keep = None
    if masked:  # batch row 1 has pads; with over_tokens False their rows have no max at all
        keep = torch.ones(2, 1, 10, 1, dtype=torch.bool)
        keep[1, :, 6:] = False
    ours = stabilised_exp(p, extra, over_tokens=over_tokens, through_max=through_max, max_keep=keep, zero_keep=keep)
    plain = _plain_stabilised_exp(p, extra, over_tokens, through_max, keep)
    assert ours[1].shape == ((2, 3, 1, 1) if over_tokens else (2, 3, 10, 1))
    weights = [torch.randn_like(t).masked_fill(t == -math.inf, 0.0) for t in plain]
    grads = []
    for out, top in (ours, plain):
        loss = (out * weights[0]).sum() + (top.masked_fill(top == -math.inf, 0.0) * weights[1]).sum()
        grads.append(torch.autograd.grad(loss, (p, extra)))
    for a, b in zip((*ours, *grads[0]), (*plain, *grads[1]), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0


def test_stabilised_exp_sends_the_max_gradient_to_the_maximal_element():
    p = torch.tensor([[[[0.0, 2.0, 1.0]]]], dtype=torch.float64, requires_grad=True)
    extra = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    _, top = stabilised_exp(p, extra, over_tokens=False, through_max=True)
    assert torch.autograd.grad(top.sum(), p)[0].tolist() == [[[[0.0, 1.0, 0.0]]]]
    # d/dp sum exp(p - max p): exp(p - 2) everywhere, minus the whole sum at the max when c is differentiable
    expected = torch.exp(p.detach() - 2)
    for through_max in (False, True):
        out, _ = stabilised_exp(p, extra, over_tokens=False, through_max=through_max)
        (grad,) = torch.autograd.grad(out.sum(), p)
        want = expected.clone()
        if through_max:
            want[..., 1] -= expected.sum()
        assert torch.allclose(grad, want)
