"""Reformer LSH: buckets, same-bucket structure, dense multiset reference, padding, from_official against
an emulation of HF transformers 3.3.1 ``LSHSelfAttention`` (written from spec DPBN §5.3)."""

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo.ops.reformer import (
    auto_num_buckets,
    draw_rotations,
    hash_buckets,
    naive_reformer_attention,
    normalise_keys,
    reformer_attention,
)


def test_auto_num_buckets_follows_hf_rule():
    assert auto_num_buckets(256, 64) == (8,)
    assert auto_num_buckets(4096, 64) == (128,)
    assert auto_num_buckets(16384, 64) == (16, 32)  # factorised above 2 * max(sqrt(N/64), 64)
    assert auto_num_buckets(100, 64) == (2,)


def test_fixed_seed_is_deterministic_and_none_draws_fresh():
    q = torch.randn(1, 2, 40, 8)
    kw = dict(bucket_size=8, num_buckets=(4,))
    assert torch.equal(reformer_attention(q, q, q, **kw), reformer_attention(q, q, q, **kw))
    torch.manual_seed(0)
    a = reformer_attention(q, q, q, hash_seed=None, **kw)
    assert not torch.equal(a, reformer_attention(q, q, q, hash_seed=None, **kw))
    rot = draw_rotations(2, 8, 2, (4,), 5, q.device)
    assert torch.equal(reformer_attention(q, q, q, rotations=rot, **kw), reformer_attention(q, q, q, hash_seed=5, **kw))


def test_one_chunk_per_bucket_is_masked_softmax_over_same_bucket_pairs():
    """With rotations that put exactly c tokens in each bucket, chunk = bucket: one round is a
    softmax over same-bucket pairs (minus self) plus the previous bucket's chunk."""
    torch.manual_seed(0)
    n, c = 32, 8
    q = torch.randn(1, 1, n, 4, dtype=torch.float64)
    rot = torch.randn(1, 4, 1, 2, dtype=torch.float64)
    buckets = hash_buckets(q, rot, (4,))[0, 0, 0]
    order = torch.argsort(buckets * n + torch.arange(n))
    q = q[:, :, order]  # reorder so that each bucket's tokens are contiguous ...
    buckets = buckets[order]
    v = torch.randn(1, 1, n, 3, dtype=torch.float64)
    out = reformer_attention(q, q, v, num_hashes=1, bucket_size=c, num_buckets=(4,), rotations=rot)
    keys = normalise_keys(q)[0, 0]
    chunk = torch.arange(n) // c  # slots = tokens here (sorted input)
    allowed = (chunk[:, None] == chunk[None, :]) | (chunk[None, :] == (chunk[:, None] - 1) % (n // c))
    allowed &= ~torch.eye(n, dtype=torch.bool)
    scores = (q[0, 0] @ keys.T).masked_fill(~allowed, float("-inf"))
    expected = torch.softmax(scores, -1) @ v[0, 0]
    torch.testing.assert_close(out[0, 0], expected)
    same = buckets[:, None] == buckets[None, :]
    sizes = torch.bincount(buckets, minlength=4)
    if (sizes == c).all():  # then "chunk" == "bucket": same-bucket pairs are exactly the own chunk
        assert torch.equal(same, chunk[:, None] == chunk[None, :])


@pytest.mark.parametrize("pad_slots", [False, True])
@pytest.mark.parametrize(("n", "hashes"), [(37, 1), (64, 2), (90, 3)])
def test_matches_dense_multiset_reference_fp32(n, hashes, pad_slots):
    torch.manual_seed(2)
    q, v = torch.randn(2, 2, n, 8, requires_grad=True), torch.randn(2, 2, n, 8, requires_grad=True)
    mask = torch.arange(n)[None] < torch.tensor([[n], [n - 10]])
    kw = dict(mask=mask, num_hashes=hashes, bucket_size=8, num_buckets=(4,), pad_slots=pad_slots)
    out = reformer_attention(q, q, v, **kw)
    ref = naive_reformer_attention(q.double(), q.double(), v.double(), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-5, atol=1e-5)


def test_no_self_attention_unless_alone():
    q = torch.randn(1, 1, 1, 4)
    v = torch.randn(1, 1, 1, 4)
    assert torch.equal(reformer_attention(q, q, v), v)  # a single token attends itself
    q = torch.randn(1, 1, 6, 4)
    weights = reformer_attention(q, q, torch.eye(6)[None, None], bucket_size=8)
    assert torch.all(weights[0, 0].diagonal() == 0)


def test_bad_options_and_rotations():
    with pytest.raises(ValueError, match="num_buckets must be one or two even factors"):
        attnzoo.build("reformer", 32, 4, num_buckets=(3,))
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build("reformer", 32, 4, causal=True)
    with pytest.raises(TypeError, match=r"option pad_slots must be (a )?bool"):
        attnzoo.build("reformer", 32, 4, pad_slots=1)
    q = torch.randn(1, 2, 40, 8)
    with pytest.raises(ValueError, match=r"rotations must have shape \(H, d, R, nb/2\)"):
        reformer_attention(q, q, q, bucket_size=8, num_buckets=(4,), rotations=torch.randn(2, 8, 2, 3))


class HFLSHSelfAttention(nn.Module):
    """transformers 3.3.1 ``LSHSelfAttention`` (encoder, eval), chunk 64, 1 chunk before, rotations given."""

    def __init__(self, dim, heads, num_hashes, chunk=64):
        super().__init__()
        self.h, self.d, self.r, self.c = heads, dim // heads, num_hashes, chunk
        self.query_key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)

    def forward(self, x, mask, rotations):
        b, n, dim = x.shape

        def heads(t):
            return t.view(b, n, self.h, self.d).transpose(1, 2)

        qk, v = heads(self.query_key(x)), heads(self.value(x))
        norm = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + 1e-6) * self.d**-0.5
        if n <= self.c:
            dots = qk @ norm.transpose(-1, -2)
            dots = torch.where(mask[:, None, None, :].bool(), dots, torch.tensor(-1e9))
            dots = torch.where(torch.eye(n, dtype=torch.bool), torch.tensor(-1e5), dots)
            out = torch.softmax(dots, -1) @ v
            return out.transpose(1, 2).reshape(b, n, dim)
        power = (2 * (n // self.c)).bit_length() - 1
        nb = 2**power  # (no factorisation below N = 8192)
        rot = torch.einsum("bmtd,mdhr->bmhtr", qk, rotations)
        buckets = torch.argmax(torch.cat([rot, -rot], -1), -1)  # (B, H, R, N)
        buckets = torch.where(mask[:, None, None, :].bool(), buckets, torch.tensor(nb))
        buckets = (buckets + (torch.arange(self.r) * (nb + 1)).view(1, 1, -1, 1)).flatten(2)
        total = self.r * n
        sorted_idx = torch.argsort(total * buckets + torch.arange(total) % total, dim=-1)
        undo = torch.argsort(sorted_idx, dim=-1)
        per_hash = sorted_idx % n

        def gather(t):
            return t.gather(2, per_hash[..., None].expand(-1, -1, -1, self.d))

        nc = total // self.c

        def chunks(t):
            return t.reshape(b, self.h, nc, self.c, *t.shape[3:])

        def adjacent(t):
            return torch.cat([torch.cat([t[:, :, -1:], t[:, :, :-1]], 2), t], 3)

        q_c, k_c, v_c = chunks(gather(qk)), adjacent(chunks(gather(norm))), adjacent(chunks(gather(v)))
        q_idx = chunks(per_hash)
        k_idx = adjacent(q_idx)
        dots = q_c @ k_c.transpose(-1, -2)
        key_real = mask[:, None, None, :].expand(b, self.h, nc, n).gather(-1, k_idx).bool()[..., None, :]
        dots = torch.where(key_real, dots, torch.tensor(-1e9))
        dots = torch.where(q_idx[..., :, None] != k_idx[..., None, :], dots, torch.tensor(-1e5))
        logits = torch.logsumexp(dots, -1, keepdim=True)
        out = (torch.exp(dots - logits) @ v_c).reshape(b, self.h, total, self.d)
        logits = logits.reshape(b, self.h, total)
        out = out.gather(2, undo[..., None].expand(-1, -1, -1, self.d)).view(b, self.h, self.r, n, self.d)
        logits = logits.gather(2, undo).view(b, self.h, self.r, n, 1)
        probs = torch.exp(logits - torch.logsumexp(logits, 2, keepdim=True))
        out = (out * probs).sum(2)
        return out.transpose(1, 2).reshape(b, n, dim)


class OfficialLRAReformer(nn.Module):
    """Nystromformer-LRA ``Attention`` with attn_type reformer: W_q/W_v tied into the LSH module, ff out."""

    def __init__(self, dim, heads, num_hash):
        super().__init__()
        self.W_q, self.W_k, self.W_v, self.ff = (nn.Linear(dim, dim) for _ in range(4))
        self.attn = HFLSHSelfAttention(dim, heads, num_hash)
        self.attn.query_key.weight = self.W_q.weight
        self.attn.value.weight = self.W_v.weight

    def forward(self, x, mask, rotations):
        return self.ff(self.attn(x, mask, rotations))


@pytest.mark.parametrize(("n", "num_hash"), [(256, 2), (128, 1), (64, 2)])
def test_from_official_matches_nystromformer_lra_reformer(n, num_hash):
    torch.manual_seed(5)
    official = OfficialLRAReformer(32, 4, num_hash).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.5)
    args = {"num_hash": num_hash, "max_seq_len": n}
    ours = attnzoo.from_official(
        "nystromformer-lra", "reformer", dim=32, num_heads=4, args=args, state_dict=official.state_dict()
    ).eval()
    nb = auto_num_buckets(n, 64)[0]
    rotations = torch.randn(4, 8, num_hash, nb // 2)
    ours.rotations = rotations
    x = torch.randn(2, n, 32)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 21 :] = False
    with torch.no_grad():
        expected = official(x, mask.float(), rotations)
        got = ours(x, mask)
    real = mask[..., None].expand_as(got)
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * expected[real].abs().max() + 1e-6


def test_from_official_rejects_unknown_tensors():
    sd = OfficialLRAReformer(32, 4, 2).state_dict()
    with pytest.raises(ValueError, match=r"unexpected \['junk'\]"):
        attnzoo.from_official(
            "nystromformer-lra", "reformer", dim=32, num_heads=4, state_dict={**sd, "junk": sd["ff.bias"]}
        )


def test_hash_buckets_equal_argmax_of_rotations_and_their_negatives_with_ties():
    """HF's rule ``argmax(cat([xR, -xR]))`` per factor (first maximum wins), on integer data full of ties."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-2, 3, (1, 2, 300, 4), generator=gen).float()
    rotations = torch.randint(-1, 2, (2, 4, 2, 4 + 2), generator=gen).float()
    rotated = torch.einsum("bhtd,hdrk->bhrtk", q, rotations)
    first = torch.argmax(torch.cat([rotated[..., :4], -rotated[..., :4]], -1), -1)
    second = torch.argmax(torch.cat([rotated[..., 4:], -rotated[..., 4:]], -1), -1)
    assert torch.equal(hash_buckets(q, rotations, (8, 4)), first + 8 * second)


def test_shared_keys_equal_hf_norm_and_their_gradient():
    """``normalise_keys`` (hand-written backward) against the composed formula, values and gradients."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 10, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    q.data[0, 0, 0] = 0.0  # a zero row: the 1e-6 keeps it finite

    def composed(x):
        return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) / 8**0.5

    torch.testing.assert_close(normalise_keys(q), composed(q), rtol=1e-12, atol=1e-12)
    grad = torch.randn(2, 3, 10, 8, generator=gen, dtype=torch.float64)
    (ours,) = torch.autograd.grad(normalise_keys(q), q, grad)
    (expected,) = torch.autograd.grad(composed(q), q, grad)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(normalise_keys, (q,))
