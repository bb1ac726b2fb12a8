"""Diffuser: the graph (official replay, edge counts, crops), edge softmax + diffusion vs the dense closed
form, and from_official against an emulated ``DiffuserSelfAttention`` (dense, written from spec DPBN §1)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.ops.diffuser import (
    diffuser_attention,
    diffuser_graph,
    diffusion_coefficients,
    edge_softmax,
    naive_diffuser_attention,
    official_graph,
    resolve_graph,
)

L = 4096


@pytest.fixture(scope="module")
def official_adj():
    """The official ``_create_adj_mat`` (w=64, 64 random, 64 global), replayed densely; Adj[s, t] = s -> t."""
    w, state = 64, np.random.get_state()
    adj = np.zeros((L, L), dtype=bool)
    for i in range(L // (w // 2) - 1):
        start = i * (w // 2)
        adj[start : start + w, start : start + w] = True
    np.random.seed(0)
    flat = np.random.choice(L * L, L * 64, replace=False)
    adj[flat % L, flat // L] = True
    glob = np.random.choice(range(w, L), 64, replace=False)
    adj[glob, :] = True
    adj[:, glob] = True
    np.random.set_state(state)
    return adj


@pytest.mark.parametrize(("n", "edges"), [(512, 54_623), (1024, 148_938)])
def test_official_graph_edge_counts(n, edges, official_adj):
    graph = official_graph(n)
    assert graph.num_edges == edges == int(official_adj[:n, :n].sum())
    assert graph.globals[:5].tolist() == [101, 144, 163, 354, 504]


def test_official_graph_equals_dense_replay(official_adj):
    dense = official_graph(256).to_dense()  # [t, s]
    assert torch.equal(dense, torch.from_numpy(official_adj[:256, :256].T.copy()))


def test_attnzoo_graph_local_part_and_crops():
    full = diffuser_graph(96, 16, 4, 3, 0, 128).to_dense()
    assert torch.equal(diffuser_graph(40, 16, 4, 3, 0, 128).to_dense(), full[:40, :40])  # crop-consistent
    none = diffuser_graph(96, 16, 0, 0, 0, 128).to_dense()
    t = torch.arange(96)
    m = t // 8
    expected = (t[None, :] >= (m[:, None] - 1) * 8) & (t[None, :] < (m[:, None] + 2) * 8)
    assert torch.equal(none, expected) and torch.equal(none, none.T)
    assert (full & ~none).any()  # random / global edges exist
    graph = diffuser_graph(96, 16, 4, 3, 0, 128)
    assert len(graph.globals) > 0 and (graph.globals >= 16).all()
    assert full[graph.globals].all() and full[:, graph.globals].all()


def test_global_tokens_override():
    graph = resolve_graph(40, "attnzoo", 8, 2, 5, 0, (0, 7, 99))
    assert graph.globals.tolist() == [0, 7]
    dense = graph.to_dense()
    assert dense[0].all() and dense[:, 7].all()
    with pytest.raises(ValueError, match="global_tokens must be positions >= 0"):
        resolve_graph(40, "attnzoo", 8, 2, 5, 0, (-1,))


def test_closed_form_coefficients():
    assert diffusion_coefficients(5, 0.1) == pytest.approx([0.1, 0.09, 0.081, 0.0729, 0.06561, 0.59049])
    assert sum(diffusion_coefficients(7, 0.3)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("n", "hops", "global_tokens"), [(33, 1, None), (70, 5, None), (33, 5, (0, 5, 32)), (70, 1, (9,))]
)
def test_matches_dense_closed_form_fp32_outputs_and_grads(n, hops, global_tokens):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(n)[None] < torch.tensor([[n], [n - 11]])  # (32 is a padded global token)
    kw = dict(mask=mask, attention_window=8, num_rand=6, num_glob=2, hops=hops, alpha=0.2, global_tokens=global_tokens)
    out = diffuser_attention(q, k, v, **kw)
    ref = naive_diffuser_attention(*(t.double() for t in (q, k, v)), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-5, atol=1e-5)


def test_edge_softmax_equals_dense_masked_softmax_and_its_gradient():
    n = 7
    dst = torch.tensor([0, 0, 0, 2, 2, 3, 5, 5, 5, 5])  # sorted by destination; nodes 1, 4, 6 have no in-edge
    src = torch.tensor([1, 3, 6, 0, 2, 3, 0, 1, 4, 6])

    def dense_reference(scores: torch.Tensor) -> torch.Tensor:
        dense = torch.full((2, 3, n, n), float("-inf"), dtype=torch.float64)
        dense[:, :, dst, src] = scores
        return torch.softmax(dense, -1).nan_to_num(0.0)[:, :, dst, src]

    scores = torch.randn(2, 3, dst.numel(), dtype=torch.float64) * 3
    scores[0, 1, 5] = float("-inf")  # node 3's only in-edge masked: its row gets zero weights
    out = edge_softmax(scores, dst, n)
    torch.testing.assert_close(out, dense_reference(scores), rtol=1e-12, atol=1e-12)
    assert float(out[0, 1, 5]) == 0.0 and torch.isfinite(out).all()
    finite = (torch.randn(2, 3, dst.numel(), dtype=torch.float64) * 3).requires_grad_()
    out, ref = edge_softmax(finite, dst, n), dense_reference(finite)
    grad = torch.randn_like(out)
    torch.testing.assert_close(*(torch.autograd.grad(x, finite, grad)[0] for x in (out, ref)), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, dst, n), (finite,))


def test_bad_options_and_causal():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="diffuser cannot be causal"):
        diffuser_attention(q, q, q, causal=True)
    with pytest.raises(ValueError, match="graph must be one of"):
        diffuser_attention(q, q, q, graph="dgl")
    with pytest.raises(ValueError, match="official Diffuser graph has 4096 nodes"):
        official_graph(5000)
    with pytest.raises(ValueError, match="attention_window must be even"):
        attnzoo.build("diffuser", 32, 4, attention_window=7)
    with pytest.raises(ValueError, match=r"alpha must be <= 1\.0"):
        attnzoo.build("diffuser", 32, 4, alpha=1.5)
    with pytest.raises(TypeError, match=r"option hops must be (an )?int"):
        attnzoo.build("diffuser", 32, 4, hops=2.0)


class OfficialDiffuserSelfAttention(nn.Module):
    """Dense emulation of asFeng/Diffuser ``DiffuserSelfAttention`` on a given Adj (eval, spec DPBN §1.3)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, adj, ext_mask):
        b, n, dim = x.shape

        def heads(t):
            return t.view(b, n, self.h, self.d).permute(0, 2, 1, 3)

        q = heads(self.query(x) / math.sqrt(self.d))
        k, v = heads(self.key(x)), heads(self.value(x))
        valid = ext_mask >= 0
        score = q @ k.transpose(-1, -2)  # [t, s] = <K_s, Q_t>
        edge = torch.from_numpy(adj.T.copy())[None, None]  # query t reads s iff Adj[s, t]
        both = (valid[:, None, :, None] & valid[:, None, None, :]).expand_as(score)
        score = torch.where(both, score, torch.full_like(score, -10000.0))
        score = score.masked_fill(~edge, float("-inf"))
        a = torch.softmax(score, -1)
        h = v
        for _ in range(5):
            h = 0.9 * (a @ h) + 0.1 * v
        return h.permute(0, 2, 1, 3).reshape(b, n, dim)


def test_from_official_matches_diffuser(official_adj):
    torch.manual_seed(4)
    n = 256
    official = OfficialDiffuserSelfAttention(32, 4).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.5)
    ours = attnzoo.from_official("diffuser", "diffuser", dim=32, num_heads=4, state_dict=official.state_dict()).eval()
    x = torch.randn(2, n, 32)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 200:] = False
    ext = torch.where(mask, 0.0, -10000.0)
    ext[:, 0] = 10000.0  # a "global" CLS flag only marks validity (D1)
    with torch.no_grad():
        expected = official(x, official_adj[:n, :n], ext)
        got = ours(x, mask)
    real = mask[..., None].expand_as(got)
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * expected[real].abs().max() + 1e-6
    assert got[~real].abs().max() == 0  # pad rows zeroed here (the official averages neighbours, D2)
    with pytest.raises(ValueError, match="not a DiffuserSelfAttention state dict"):
        attnzoo.from_official(
            "diffuser", "diffuser", dim=32, num_heads=4, state_dict={"query.weight": torch.zeros(32, 32)}
        )
