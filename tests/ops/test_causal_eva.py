"""Causal EVA: fast path vs dense reference, no leakage, prefixes, quirks behind compat, module draws and dropout."""

import pytest
import torch

import attnzoo
import attnzoo.ops.eva.causal as causal_module
from attnzoo.ops.eva import causal_eva_attention, naive_causal_eva_attention
from attnzoo.ops.eva.chunks import t5_num_buckets
from attnzoo.testing import assert_same_gradients

F64 = torch.float64


def qkv(b, h, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen, dtype=F64).requires_grad_() for _ in range(3)]


def check_against_naive(q, k, v, args, extra=()):
    """Fast path vs dense reference: outputs, and gradients into q, k, v and ``extra`` (the T5 table)."""
    out, ref = causal_eva_attention(q, k, v, **args), naive_causal_eva_attention(q, k, v, **args)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    assert_same_gradients(ref, out, (q, k, v, *extra), 1e-9, names="qkv" + "t" * len(extra))


CASES = [
    pytest.param(dict(window_size=4, chunk_size=2), id="w4-r2"),
    pytest.param(dict(window_size=6, num_chunks=5), id="w6-nc5"),
    pytest.param(dict(window_size=4, chunk_size=4, overlap_window=True), id="w4-r4-overlap"),
    pytest.param(dict(window_size=8, chunk_size=2, overlap_window=True, compat=True), id="w8-r2-overlap-compat"),
    pytest.param(dict(window_size=5, compat=True), id="w5-compat"),
]


@pytest.mark.parametrize("row_bytes", [None, 1], ids=["one-block", "row-by-row"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("kw", CASES)
def test_matches_naive(kw, causal, row_bytes, monkeypatch):
    if row_bytes is not None:  # the chunk branch one query row at a time (each with its own visible prefix)
        monkeypatch.setattr(causal_module, "CHUNK_ROWS_BYTES", row_bytes)
    q, k, v = qkv(2, 2, 37, 8)
    w = kw["window_size"]
    e = w if kw.get("overlap_window") else 0
    t5 = torch.randn(t5_num_buckets(w, e), 1, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_()
    mask = torch.arange(37)[None] < torch.tensor([[37], [29]])
    check_against_naive(q, k, v, dict(kw, causal=causal, mask=mask, t5_table=t5), (t5,))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_matches_naive_when_chunks_tile_the_sequence(causal):
    """No mask and chunks that tile N exactly (the summaries' reshape path), outputs and gradients."""
    q, k, v = qkv(2, 2, 48, 8, seed=5)
    check_against_naive(q, k, v, dict(window_size=8, chunk_size=4, causal=causal))


@pytest.mark.parametrize("kw", CASES)
def test_causal_output_equals_each_prefix_alone(kw):
    """No leakage: the causal output on tokens < t is the computation on the prefix of length t alone."""
    q, k, v = (t.detach() for t in qkv(1, 2, 40, 8, seed=3))
    full = causal_eva_attention(q, k, v, **kw)
    lengths = (8, 13, 24, 33) if "num_chunks" not in kw else (30,)  # num_chunks: r from N' (chunk count fixed)
    for t in lengths:
        if "num_chunks" in kw and (-(-t // kw["window_size"]) * kw["window_size"]) // kw["num_chunks"] != 9:
            continue
        part = causal_eva_attention(q[:, :, :t], k[:, :, :t], v[:, :, :t], **kw)
        torch.testing.assert_close(full[:, :, :t], part, atol=1e-12, rtol=0)
    changed = v.clone()
    changed[:, :, 25:] += 1.0
    torch.testing.assert_close(
        causal_eva_attention(q, k, changed, **kw)[:, :, :25], full[:, :, :25], atol=1e-12, rtol=0
    )


def test_default_counts_no_key_twice_compat_does():
    q, k, v = (t.detach() for t in qkv(1, 2, 32, 8, seed=4))
    ours = causal_eva_attention(q, k, v, window_size=8, chunk_size=2)
    quirk = causal_eva_attention(q, k, v, window_size=8, chunk_size=2, compat=True)
    assert (ours - quirk).abs().max() > 1e-3
    # rows of the first chunk see no chunk either way; official rows 2..7 re-count chunks of their own block
    torch.testing.assert_close(ours[:, :, :2], quirk[:, :, :2], atol=1e-12, rtol=0)
    assert (ours[:, :, 2:8] - quirk[:, :, 2:8]).abs().amax(dim=(0, 1, 3)).min() > 1e-6


def test_errors():
    q, k, v = qkv(1, 1, 8, 4)
    with pytest.raises(ValueError, match=r"window_size \(4\) must be a multiple of chunk_size \(3\)"):
        causal_eva_attention(q, k, v, window_size=4, chunk_size=3)
    with pytest.raises(ValueError, match="adaptive_proj='default' crashes the official"):
        attnzoo.build("causal_eva", 16, 2, causal=True, adaptive_proj="default")
    with pytest.raises(ValueError, match=r"t5_table must have shape \(16, 1\)"):
        causal_eva_attention(q, k, v, t5_table=torch.zeros(16, 2, dtype=F64))


def test_module_draws_dropout_and_gradients():
    module = attnzoo.build(
        "causal_eva", 16, 2, causal=True, dropout=0.2, window_size=4, chunk_size=2, use_t5_rpe=True, seed=0
    ).double()
    x = torch.randn(2, 20, 16, dtype=F64)
    module(x).square().sum().backward()
    names = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert names == {n for n, _ in module.named_parameters()}
    assert {"adaptive_mu_q.1.weight", "adaptive_mu_k.0.bias", "rel_pos_bias.weight"} <= names
    module.eval()
    noise = torch.randn(2, 2, 10, 8, dtype=F64)
    torch.testing.assert_close(module(x), module(x), atol=0, rtol=0)  # eval: no draws, no dropout
    module.dropout = 0.0
    module.train()
    q, k, v = module.project(x)
    expected = causal_eva_attention(
        q,
        k,
        v,
        window_size=4,
        chunk_size=2,
        chunk_keys=module.chunk_keys,
        noise=noise,
        t5_table=module.rel_pos_bias.weight,
    )
    torch.testing.assert_close(module(x, draws=[noise]), module.merge(expected))


@pytest.mark.parametrize("row_bytes", [None, 1], ids=["one-block", "row-by-row"])
def test_chunk_branch_dropout_gradients_and_mean(row_bytes, monkeypatch):
    """The chunk branch's written-out backward with dropout (keep masks saved) against finite differences
    under a fixed seed, and dropout keeps the output's expectation."""
    if row_bytes is not None:
        monkeypatch.setattr(causal_module, "CHUNK_ROWS_BYTES", row_bytes)
    gen = torch.Generator().manual_seed(4)
    q, keys, beta = (torch.randn(1, 2, 7, 3, generator=gen, dtype=F64).requires_grad_() for _ in range(3))
    keys, beta = keys[:, :, :4].detach().requires_grad_(), beta[:, :, :4].detach().requires_grad_()
    hidden = torch.rand(1, 7, 4, generator=gen) < 0.3
    hidden[0, 2] = True  # a row that sees no chunk: output 0, lse -inf, no gradient

    def branch(*inputs, p=0.3, seed=0):
        torch.manual_seed(seed)
        out, lse = causal_module._chunk_attention(*inputs, hidden, p)
        return out, lse.masked_fill(lse.isinf(), 0.0)

    assert torch.autograd.gradcheck(branch, (q, keys, beta))
    out, lse = branch(q, keys, beta)
    assert out[0, :, 2].abs().max() == 0
    exact, exact_lse = branch(q, keys, beta, p=0.0)
    torch.testing.assert_close(lse, exact_lse)  # dropout acts after the normaliser
    assert not torch.allclose(out, exact)
    mean = torch.stack([branch(q, keys, beta, seed=s)[0] for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, exact, atol=0.05 * exact.abs().max().item(), rtol=0)
