"""Fractional Diffuser: series coefficients, L^gamma against an exact fractional power, every variant
against the dense reference, and from_official against an emulated fractional-attn class (spec DPBN §2)."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.ops.diffuser import (
    GRAPH_VARIANTS,
    TIED_VARIANTS,
    VARIANTS,
    diffuser_fractional_attention,
    naive_diffuser_fractional_attention,
    official_graph,
    series_coefficients,
)
from attnzoo.ops.diffuser.fractional import _fractional_power


def test_series_coefficients_are_signed_binomials():
    gamma = 0.3
    expected = [(-1) ** k * math.gamma(gamma + 1) / (math.gamma(k + 1) * math.gamma(gamma - k + 1)) for k in range(6)]
    assert series_coefficients(gamma, 5) == pytest.approx(expected)
    assert all(c < 0 for c in series_coefficients(gamma, 8)[1:])


def exact_power(lap: torch.Tensor, gamma: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(lap)
    return vecs @ torch.diag(vals.clamp_min(0) ** gamma) @ vecs.T


def test_truncated_series_converges_to_the_exact_fractional_power():
    torch.manual_seed(0)
    n = 10
    rows, cols = torch.triu_indices(n, n, 1)
    keep = torch.rand(rows.shape[0]) < 0.5
    rows, cols = rows[keep], cols[keep]
    rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])  # symmetric graph
    half = torch.rand(rows.shape[0] // 2, dtype=torch.float64) + 0.5
    values = torch.cat([half, half])[None, None]
    dense = torch.zeros(n, n, dtype=torch.float64).index_put((rows, cols), values[0, 0])
    exact = exact_power(torch.diag(dense.sum(1)) - dense, 0.5)
    errors = [
        (_fractional_power(values, rows, cols, n, 0.5, t, batch_rho=False)[0, 0] - exact).abs().max()
        for t in (2, 7, 40, 300)
    ]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 0.05 < errors[1]  # slow convergence (L is singular), as the spec measured


@pytest.mark.parametrize("variant", GRAPH_VARIANTS)
@pytest.mark.parametrize("batch_rho", [False, True])
def test_variants_match_dense_reference_fp32(variant, batch_rho):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 24, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(24)[None] < torch.tensor([[24], [19]])
    kw = dict(mask=mask, variant=variant, gamma=0.6, attention_window=8, num_rand=4, num_glob=1, batch_rho=batch_rho)
    out = diffuser_fractional_attention(q, k, v, **kw)
    ref = naive_diffuser_fractional_attention(*(t.double() for t in (q, k, v)), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", GRAPH_VARIANTS)
def test_kept_pad_rows_are_the_official_rows_of_isolated_nodes(variant):
    """zero_pad_rows=False (F6): a pad node has no edge, so its row of the operator is what the official
    code leaves there (regfrac -V, detached_regfrac -0.8 V, renormfrac 0.1 V, lnl 0); real rows do not change."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 24, 8) for _ in range(3))
    mask = torch.arange(24)[None] < torch.tensor([[24], [19]])
    kw = dict(mask=mask, variant=variant, attention_window=8, num_rand=4, num_glob=1, batch_rho=True)
    kept = diffuser_fractional_attention(q, k, v, zero_pad_rows=False, **kw)
    ref = naive_diffuser_fractional_attention(q.double(), k.double(), v.double(), zero_pad_rows=False, **kw)
    torch.testing.assert_close(kept.double(), ref, rtol=1e-5, atol=1e-5)
    zeroed = diffuser_fractional_attention(q, k, v, **kw)
    torch.testing.assert_close(zeroed.transpose(1, 2)[mask], kept.transpose(1, 2)[mask], rtol=0, atol=0)
    assert zeroed[1, :, 19:].abs().max() == 0
    factor = {"regfrac": -1.0, "detached_regfrac": -0.8, "renormfrac": 0.1, "lnl": 0.0}.get(variant)
    if factor is not None:
        torch.testing.assert_close(kept[1, :, 19:], factor * v[1, :, 19:])


def test_intended_math_differs_from_official_where_it_should():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 1, 24, 8, requires_grad=True) for _ in range(3))
    kw = dict(variant="renormfrac", attention_window=8, num_rand=4, num_glob=1)
    alone = diffuser_fractional_attention(q[:1] * 3, k[:1] * 3, v[:1], **kw)
    batched = diffuser_fractional_attention(q * 3, k * 3, v, **kw)
    torch.testing.assert_close(batched[:1], alone)  # per-sequence rho: items do not interact
    limit = dict(kw, variant="limitfrac")
    official = diffuser_fractional_attention(q * 3, k * 3, v, batch_rho=True, **limit)
    own = diffuser_fractional_attention(q[:1] * 3, k[:1] * 3, v[:1], **limit)
    assert (official[:1] - own).abs().max() > 1e-3  # F5: the official limit vector spans the batch
    detached = diffuser_fractional_attention(q, k, v, detach=True, **kw)
    (dq,) = torch.autograd.grad(detached.sum(), q, allow_unused=True)
    assert dq is None or dq.abs().max() == 0  # F4: no gradient to q
    big = diffuser_fractional_attention(q * 40, k * 40, v, variant="limitfrac", attention_window=8, num_rand=4)
    assert torch.isfinite(big).all()  # stabilised exponent (official: inf / NaN, F7)


def test_bad_options():
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\)"):
        attnzoo.build("diffuser_fractional", 32, 4, gamma=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        attnzoo.build("diffuser_fractional", 32, 4, variant="l3")
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build("diffuser_fractional", 32, 4, causal=True)
    with pytest.raises(TypeError, match=r"option batch_rho must be (a )?bool"):
        attnzoo.build("diffuser_fractional", 32, 4, batch_rho="yes")


class OfficialFractional(nn.Module):
    """A fractional-attn class at 0f01d1e, emulated densely on the flattened batch (spec DPBN §2.2-2.3)."""

    def __init__(self, dim, heads, variant, gamma):
        super().__init__()
        self.h, self.d, self.variant, self.gamma = heads, dim // heads, variant, gamma
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, g, ext_mask):
        b, n, dim = x.shape
        bn = b * n

        def heads(t):  # (H, BN, d)
            return t.view(bn, self.h, self.d).transpose(0, 1)

        q = heads(self.query(x) / math.sqrt(self.d))
        k, v = heads(self.key(x)), heads(self.value(x))
        valid = (ext_mask >= 0).reshape(bn)
        g = g * (valid[:, None] & valid[None, :])  # the graph restricted to real tokens, as officially
        sign = -1.0 if self.variant == "renormfrac" else 1.0
        w = torch.exp(sign * k @ q.transpose(-1, -2)) * g
        if self.variant == "symlimitfrac":
            w = (w + w.transpose(-1, -2)) / 2
        deg = w.sum(-1)
        rho = deg.max(-1).values[:, None, None]  # over all B*N nodes, per head
        lap = torch.diag_embed(deg) - w
        bmat = rho * torch.eye(bn) - lap
        terms = {"unfrac": 6, "limitfrac": 6, "symlimitfrac": 6}.get(self.variant, 7)
        lg, power, coef = torch.eye(bn).repeat(self.h, 1, 1), torch.eye(bn).repeat(self.h, 1, 1), 1.0
        for i in range(1, terms + 1):
            coef *= (i - 1 - self.gamma) / (i * rho)
            power = bmat @ power
            lg = lg + coef * power
        lg = lg * rho**self.gamma

        def norm1(t):
            return t / t.abs().sum(-1, keepdim=True).clamp_min(1e-12)

        frac = norm1(torch.diag_embed(lg.diagonal(dim1=-2, dim2=-1)) - lg)
        if self.variant == "renormfrac":
            out = 0.9 * frac @ v + 0.1 * v
        elif self.variant == "unfrac":
            out = v - lg @ v
        elif self.variant in ("regfrac", "detached_regfrac"):
            out = norm1(w - lg * (1 - g)) @ v
            out = out if self.variant == "regfrac" else 0.9 * out + 0.1 * v
        elif self.variant == "lnl":
            out = 0.8 * norm1(w) @ v + 0.2 * frac @ v
        else:
            s = lg.diagonal(dim1=-2, dim2=-1) / lg.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
            out = (s[..., None] * v).sum(1, keepdim=True).expand_as(v)
        return out.reshape(b, n, self.h, self.d).reshape(b, n, dim)  # raw reshape of (H, BN, d), F1


@pytest.mark.parametrize("variant", GRAPH_VARIANTS)
def test_from_official_matches_fractional_attn(variant):
    torch.manual_seed(6)
    n, dim, heads = 64, 16, 2
    official = OfficialFractional(dim, heads, variant, 0.4).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.3)
    ours = attnzoo.from_official(
        "fractional-attn", variant, dim=dim, num_heads=heads, args={"gamma": 0.4}, state_dict=official.state_dict()
    ).eval()
    adj = official_graph(n).to_dense().T.float()  # (row key, column query)
    g = torch.block_diag(adj, adj)
    x = torch.randn(2, n, dim)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 50:] = False
    with torch.no_grad():
        expected = official(x, g, torch.where(mask, 0.0, -10000.0))
        got = ours(x, mask)
    # F1 scrambles tokens and heads, so real rows hold pad nodes' rows too (F6); padded rows are 0 by contract
    rows = mask & torch.isfinite(expected).all(-1)  # the unstabilised official overflows on some rows (F7)
    diff = (got[rows] - expected[rows]).abs().max()
    assert diff <= 1e-5 * expected[rows].abs().max() + 1e-6, (variant, diff)
    assert got[~mask].abs().max() == 0


@pytest.mark.parametrize("variant", TIED_VARIANTS)
def test_tied_variants_match_the_official_formulas_fp64(variant):
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 2, 20, 8, dtype=torch.float64) for _ in range(3))
    q[0, 0, 5] = q[0, 0, 3] * 2.5  # the same direction twice: arccos and |u_i - u_j| at their singular point
    mask = torch.arange(20)[None] < torch.tensor([[20], [13]])
    kw = dict(mask=mask, variant=variant, gamma=0.3)
    out = diffuser_fractional_attention(q, k, v, **kw)
    ref = naive_diffuser_fractional_attention(q, k, v, **kw)
    # fracdm keeps the cosine of the duplicated pair at 1 - eps (arccos 2e-8 instead of 0): ~1e-7 on rows 3 and 5
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-9)
    assert out[1, :, 13:].abs().max() == 0  # pad rows
    other_k = diffuser_fractional_attention(q, torch.randn_like(k), v, **kw)
    torch.testing.assert_close(other_k, out, rtol=0, atol=0)  # keys are the queries
    small = [t[:1, :1, 6:12, :3].clone().requires_grad_() for t in (q, v)]  # no duplicate: arccos has a kink there
    assert torch.autograd.gradcheck(lambda a, b: diffuser_fractional_attention(a, a, b, variant=variant), small)
    q32 = q.float().requires_grad_()
    diffuser_fractional_attention(q32, q32, v.float(), **kw).square().sum().backward()
    assert q32.grad is not None and torch.isfinite(q32.grad).all()


class OfficialTied(nn.Module):
    """fractional-attn's ``L2Attention`` / ``FracDMSelfAttention`` at 0f01d1e, as written there (but for
    fracdm's clamped cosine): raw ``(B, N, H, d) -> (H, B*N, d)`` queries, every token of the batch, raw
    output reshape."""

    def __init__(self, dim, heads, variant, gamma):
        super().__init__()
        self.h, self.d, self.variant, self.gamma = heads, dim // heads, variant, gamma
        self.query, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        if variant == "fracdm":
            self.key = nn.Linear(dim, dim)  # constructed, never used

    def forward(self, x):
        b, n, dim = x.shape
        q = self.query(x).view(b, n, self.h, self.d).reshape(self.h, b * n, self.d)
        q = q / q.norm(dim=-1, keepdim=True)
        v = self.value(x).reshape(b * n, self.h, self.d).transpose(0, 1)
        if self.variant == "l2":
            aa = q.square().sum(-1, keepdim=True)
            attn = (-(aa - 2 * q @ q.transpose(1, 2) + aa.transpose(1, 2)) * self.d**-0.5).softmax(-1)
        else:
            density = (2 * math.pi * math.pi) ** (-self.d / 2) / (b * n) * torch.cdist(q, q).exp().sum(-1)
            cosine = (q @ q.transpose(1, 2)).clamp(-1, 1)  # unclamped, the official output is all NaN (F3)
            kernel = (1 + torch.acos(cosine) / math.pi**0.5) ** (-self.d - self.gamma)
            tilde = kernel / density[:, :, None] / density[:, None, :]
            attn = tilde / tilde.sum(-1, keepdim=True)
        return (attn @ v).reshape(b, n, self.h, self.d).reshape(b, n, dim)


@pytest.mark.parametrize("variant", TIED_VARIANTS)
def test_from_official_matches_tied_variants(variant):
    torch.manual_seed(8)
    dim, heads = 16, 2
    official = OfficialTied(dim, heads, variant, 0.4).eval()
    ours = attnzoo.from_official(
        "fractional-attn", variant, dim=dim, num_heads=heads, args={"gamma": 0.4}, state_dict=official.state_dict()
    ).eval()
    x = torch.randn(3, 10, dim)
    with torch.no_grad():  # the official in fp64: in fp32 its rounded self-cosines give arccos up to 5e-4, not 0
        expected = official.double()(x.double()).float()
        got = ours(x, torch.ones(3, 10, dtype=torch.bool))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    alone = ours(x[:1], torch.ones(1, 10, dtype=torch.bool))
    assert (alone - got[:1]).abs().max() > 1e-4  # the official form mixes the sequences of a batch


FIXTURE = Path(__file__).parents[1] / "fixtures" / "fractional" / "official_fractional.pt"


@pytest.fixture(scope="module")
def official_run():
    """Outputs of fractional-attn @ 0f01d1e551dfaf9c2fdee9323fce0347bcdd3ba3, ``models/diffuser_att.py``, run on CPU
    in fp32: each class built as ``Class(config, 0, 0.5)`` (hidden 32, 2 heads, ``attention_window [16]``, dropout
    0, eval; weights ``query/key/value`` from the fixture) and called ``m(x, g=G, attention_mask=e)[0]`` on a batch
    of two sequences of 64 tokens (the second 48 real): G the dense block-diagonal graph of graphtrainer's
    ``_create_adj_mat`` (num_rand 64, num_glob 256, whose global tokens 43, 53, 60, 61 fall inside N) and
    ``_from_adj_to_batched_sparsify``; ``limitfrac`` (``LimitFracSelfAttention_dgl``) the dgl batch graph of
    ``_from_adj_to_batched_graphs`` (dgl 2.1.0); ``e`` the official mask: -10000 at padding, +10000 at the global
    tokens, 0 elsewhere. The official ``fracdm`` is all NaN (F3); ``fracdm_clamped_fp64`` is the same class in
    fp64 with ``torch.acos`` clamped to [-1, 1]."""
    return torch.load(FIXTURE, weights_only=True)


def test_official_fixture_graph_is_the_replayed_official_graph(official_run):
    cfg = official_run["config"]
    graph = official_graph(cfg["n"], cfg["attention_window"], cfg["num_rand"], cfg["num_glob"])
    torch.testing.assert_close(graph.to_dense().T, official_run["graph"])  # (row key, column query)
    assert official_run["graph"][cfg["globals_inside"]].all()  # global tokens: whole rows (and columns)


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_official_reproduces_the_official_module_on_a_padded_batch(official_run, variant):
    cfg, mask = official_run["config"], official_run["mask"]
    args = {k: cfg[k] for k in ("gamma", "attention_window", "num_rand", "num_glob")}
    weights = dict(official_run["weights"])
    if variant == "l2":  # L2Attention has no key projection
        weights = {k: v for k, v in weights.items() if not k.startswith("key.")}
    ours = attnzoo.from_official(
        "fractional-attn", variant, dim=cfg["dim"], num_heads=cfg["heads"], args=args, state_dict=weights
    ).eval()
    with torch.no_grad():
        got = ours(official_run["x"], mask)
    expected = official_run["outputs"][variant]
    if variant == "fracdm":
        assert torch.isnan(expected).all()  # F3: the official output
        expected = official_run["fracdm_clamped_fp64"].float()
    # every real row, including those the scramble (F1) fills with pad nodes' rows (F6) and the limit
    # vectors over all B*N nodes (F5); padded rows are 0 (contract; officially they hold scrambled rows)
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert got[~mask].abs().max() == 0
