"""PSF-Attn: chord factors, the dense factor product, padding, from_official against an emulated PSFNet mixer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.ops.psf import chord_offsets, naive_psf_attention, psf_attention
from attnzoo.ops.psf.naive import dense_chord_factor


def test_chord_offsets_match_official_assym_indices():
    assert chord_offsets(4) == [0, 1, 2, 4, 8]
    values = torch.arange(1.0, 6.0).expand(16, 5)  # link j of every row has value j + 1
    dense = dense_chord_factor(values, list(range(16)), 16)
    for i in range(16):
        cols = [(i + o) % 16 for o in chord_offsets(4)]
        assert dense[i].nonzero().flatten().tolist() == sorted(cols)
        assert [dense[i, c].item() for c in cols] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_aliased_offsets_add_up_quirk_p2():
    # N = 8 with 4 factors: offset 8 = 0 (mod 8) aliases the self link; both weights add
    dense = dense_chord_factor(torch.ones(8, 5), list(range(8)), 8)
    assert dense[3, 3] == 2 and dense.sum() == 40


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("mix_padding", [False, True])
@pytest.mark.parametrize("n", [16, 45])
def test_output_equals_dense_factor_product_fp32(n, mix_padding, residual):
    torch.manual_seed(0)
    v = torch.randn(2, 2, n, 8, requires_grad=True)
    factors = (torch.randn(2, 2, 4, n, 5) * 0.5).requires_grad_()
    mask = torch.arange(n)[None] < torch.tensor([[n], [n - 7]])
    mask[0, 3] = False
    kw = dict(mask=mask, factors=factors, use_residuals=residual, mix_padding=mix_padding)
    out = psf_attention(v, v, v, **kw)
    ref = naive_psf_attention(v.double(), v.double(), v.double(), **{**kw, "factors": factors.double()})
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (v, factors))
    ref_grads = torch.autograd.grad(ref.square().sum(), (v, factors))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [8, 45, 70])
def test_row_block_kernel_equals_dense_product_fp64(monkeypatch, n):
    # the wrap-at-N kernel in blocks of 16 rows: blocks whose links wrap, offsets >= N (n = 8), a short last block
    monkeypatch.setattr("attnzoo.ops.psf.chord.ROW_BLOCK_BYTES", 1)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(2, 3, n, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    factors = (torch.randn(2, 3, 4, n, 5, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    out = psf_attention(v, v, v, factors=factors)
    ref = naive_psf_attention(v, v, v, factors=factors)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (v, factors))
    ref_grads = torch.autograd.grad(ref.square().sum(), (v, factors))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_padding_changes_no_real_row_unless_mixed():
    torch.manual_seed(1)
    v, factors = torch.randn(1, 1, 20, 4), torch.randn(1, 1, 3, 20, 4)
    mask = torch.arange(20)[None] < 14
    junk = v.clone()
    junk[..., 14:, :] = 100.0
    alone = psf_attention(v[..., :14, :], v[..., :14, :], v[..., :14, :], factors=factors[..., :14, :])
    padded = psf_attention(junk, junk, junk, mask=mask, factors=factors)
    torch.testing.assert_close(padded[..., :14, :], alone)
    assert padded[..., 14:, :].abs().max() == 0
    mixed = psf_attention(junk, junk, junk, mask=mask, factors=factors, mix_padding=True)
    assert (mixed[..., :14, :] - alone).abs().max() > 1.0  # official: pads mix into real rows


def test_causal_and_bad_factor_shapes_raise():
    v = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="psf cannot be causal"):
        psf_attention(v, v, v, causal=True)
    with pytest.raises(ValueError, match=r"factors must have shape \(B, H, m, N, m \+ 1\)"):
        psf_attention(v, v, v, factors=torch.randn(1, 1, 3, 8, 3))
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build("psf", 32, 4, causal=True)
    with pytest.raises(ValueError, match="value_dim \\(6\\) must be divisible by num_heads \\(4\\)"):
        attnzoo.build("psf", 32, 4, value_dim=6)
    with pytest.raises(TypeError, match=r"option mix_padding must be (a )?bool"):
        attnzoo.build("psf", 32, 4, mix_padding="no")
    with pytest.raises(ValueError, match="num_factors must be >= 1"):
        attnzoo.build("psf", 32, 4, num_factors=0)


class MakeMLP(nn.Module):
    def __init__(self, cfg, dim_in, dim_out):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(dim_in, cfg[0]), nn.GELU(), nn.Linear(cfg[0], dim_out))

    def forward(self, x):
        return self.network(x)


class OfficialPSFMixer(nn.Module):
    """SparseFactorization ``PSFNet`` mixer (spec DPBN §3.3): ``get_chord_indices_assym`` + spmm per factor."""

    def __init__(self, n_vec, embedding_size, n_W, Ws, V, n_channels_V, use_residuals):
        super().__init__()
        self.n_W, self.use_residuals = n_W, use_residuals
        self.fs = nn.ModuleList(MakeMLP(Ws, embedding_size, n_W + 1) for _ in range(n_W))
        self.g = MakeMLP(V, embedding_size, n_channels_V)
        rows = torch.arange(n_vec).repeat_interleave(n_W + 1)
        cols = torch.tensor([(i + o) % n_vec for i in range(n_vec) for o in [0] + [2**k for k in range(n_W)]])
        self.index = torch.stack([rows, cols])

    def forward(self, x):
        v0 = self.g(x)
        v = v0
        for m in range(self.n_W):
            values = self.fs[m](x).reshape(x.shape[0], -1)  # (B, nnz), nnz index i * n_links + j
            gathered = v[:, self.index[1]] * values[..., None]
            v = torch.zeros_like(v).index_add_(1, self.index[0], gathered)
            if self.use_residuals:
                v = v + v0
        return v


@pytest.mark.parametrize(("n", "n_w", "residual"), [(64, 6, True), (64, 7, False), (100, 7, True)])
def test_from_official_matches_psfnet_mixer(n, n_w, residual):
    torch.manual_seed(2)
    official = OfficialPSFMixer(n, 32, n_w, [48, "GELU"], [40, "GELU"], 16, residual).eval()
    args = dict(n_vec=n, n_W=n_w, Ws=[48, "GELU"], V=[40, "GELU"], n_channels_V=16, use_residuals=residual)
    sd = {**official.state_dict(), "embedding.weight": torch.zeros(5, 32), "final.weight": torch.zeros(2, 16)}
    ours = attnzoo.from_official("sparse-factorization", "psf", dim=32, num_heads=1, args=args, state_dict=sd).eval()
    x = torch.randn(2, n, 32)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 10 :] = False  # the official mixer has no mask: pads mix (P1), real rows still match
    with torch.no_grad():
        expected = official(x)
        got = ours(x, mask)
    assert got.shape == (2, n, 16)
    real = mask[..., None].expand_as(got)
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * expected[real].abs().max() + 1e-6


def test_from_official_rejects_unknown_tensors():
    official = OfficialPSFMixer(16, 32, 4, [8, "GELU"], [8, "GELU"], 32, True)
    args = dict(n_vec=16, n_W=4, Ws=[8, "GELU"], V=[8, "GELU"], n_channels_V=32)
    with pytest.raises(ValueError, match=r"unexpected official tensors \['bogus'\]"):
        sd = {**official.state_dict(), "bogus": torch.zeros(1)}
        attnzoo.from_official("sparse-factorization", "psf", dim=32, num_heads=1, args=args, state_dict=sd)
    with pytest.raises(ValueError, match="Ws must be \\[hidden, 'GELU'\\]"):
        attnzoo.from_official("sparse-factorization", "psf", dim=32, num_heads=1, args={**args, "Ws": [8, 8, "GELU"]})


def test_module_dropout_acts_on_v0_in_training_only():
    module = attnzoo.build("psf", 16, 2, dropout=0.5, num_factors=2)
    x = torch.randn(1, 8, 16)
    module.eval()
    assert torch.equal(module(x), module(x))
    module.train()
    torch.manual_seed(0)
    a = module(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, module(x))
    assert F.mse_loss(a, a) == 0
