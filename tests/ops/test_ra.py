"""RA: fast path vs dense probability-space reference, mask vs quirk E9, seeded/injected draws, eval stochasticity."""

import pytest
import torch

import attnzoo
from attnzoo.ops.ra import naive_ra_attention, ra_attention, sample_key_index

F64 = torch.float64


def qkv(n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, 8, generator=gen, dtype=F64).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("num_samples", [0, -1, 1, 4])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "noise"])
def test_matches_naive(num_samples, compat, training):
    q, k, v = qkv()
    mask = torch.arange(30)[None] < torch.tensor([[30], [21]])
    noise = torch.randn(2, 2, 30, 8, generator=torch.Generator().manual_seed(1), dtype=F64) if training else None
    kw = dict(mask=mask, num_samples=num_samples, compat=compat, noise=noise, seed=3)
    out, ref = ra_attention(q, k, v, **kw), naive_ra_attention(q, k, v, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    for g, gr in zip(
        torch.autograd.grad((out * cot).sum(), (q, k, v)),
        torch.autograd.grad((ref * cot).sum(), (q, k, v)),
        strict=True,
    ):
        torch.testing.assert_close(g, gr, atol=1e-9, rtol=1e-8)


def test_sampled_keys_follow_the_softmax_and_skip_pads():
    q, k, _ = (t.detach() for t in qkv(6, seed=4))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    gen = torch.Generator().manual_seed(5)
    draws = torch.stack([sample_key_index(q, k, mask, 8**-0.5, gen) for _ in range(4000)])  # (S, B, H, N)
    freq = torch.nn.functional.one_hot(draws, 6).double().mean(0)
    logits = (8**-0.5 * q @ k.transpose(-1, -2)).masked_fill(~mask[:, None, None], float("-inf"))
    torch.testing.assert_close(freq, torch.softmax(logits, -1), atol=0.03, rtol=0)
    assert freq[0, :, :, 4:].max() == 0


def test_padding_honoured_by_default_ignored_with_compat():
    q, k, v = (t.detach() for t in qkv(30, seed=6))
    mask = (torch.arange(30)[None] < 22).expand(2, 30)
    k2 = k.clone()
    k2[:, :, 22:] += 5.0
    for num_samples in (0, -1, 1):
        ours = [ra_attention(q, kk, v, mask=mask, num_samples=num_samples) for kk in (k, k2)]
        torch.testing.assert_close(ours[0][:, :, :22], ours[1][:, :, :22], atol=1e-12, rtol=0)
        quirk = [ra_attention(q, kk, v, mask=mask, num_samples=num_samples, compat=True) for kk in (k, k2)]
        assert (quirk[0][:, :, :22] - quirk[1][:, :, :22]).abs().max() > 1e-3  # E9: pad content leaks


def test_module_eval_is_stochastic_but_seeded_and_injectable():
    x = torch.randn(2, 12, 16, dtype=F64)
    one = attnzoo.build("ra", 16, 2, seed=7).double().eval()
    two = attnzoo.build("ra", 16, 2, seed=7).double().eval()
    two.load_state_dict(one.state_dict())
    first = one(x)
    torch.testing.assert_close(first, two(x))  # same seed, same draws
    assert (one(x) - first).abs().max() > 1e-6  # a fresh key draw each call, in eval too (official)
    index = torch.randint(0, 12, (2, 2, 12))
    q, k, v = one.project(x)
    expected = one.merge(ra_attention(q, k, v, key_index=index))
    torch.testing.assert_close(one(x, draws=[index]), expected)
    one.train()
    noise = torch.randn(2, 2, 12, 8, dtype=F64)
    torch.testing.assert_close(
        one(x, draws=[index, noise]), one.merge(ra_attention(q, k, v, key_index=index, noise=noise))
    )
    with pytest.raises(ValueError, match="ran out of injected draws"):
        one(x, draws=[index])


def test_errors():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="ra cannot be causal"):
        ra_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="option num_samples must be >= -1"):
        ra_attention(q, k, v, num_samples=-2)
    with pytest.raises(ValueError, match=r"key_index must have shape \(2, 2, 8\)"):
        ra_attention(q, k, v, key_index=torch.zeros(2, 8, dtype=torch.long))
