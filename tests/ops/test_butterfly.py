"""Butterfly attention: groups from the official regrouping, dense reference, from_official, model strides."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.models.transformer import ModelConfig
from attnzoo.ops.butterfly import butterfly_attention, naive_butterfly_attention
from attnzoo.sparse.structured import butterfly_geometry, butterfly_groups


def official_stride(n: int, b: int, layer: int) -> int:
    """Solving-LRA-PathX ``ButterflyTransformer``: float n_stage, stride b^(l mod n_stage), cap."""
    n_stage = math.ceil(np.log(n) / np.log(b))
    s = b ** (layer % n_stage)
    return math.ceil(n / b) if s * b > n else s


def official_groups(n: int, b: int, s: int) -> torch.Tensor:
    """Token ids of each group by the official view/swap: ``(N/b, b)``."""
    x = torch.arange(n).view(1, n // (b * s), b, s).transpose(2, 3)
    return x.reshape(n // b, b)


@pytest.mark.parametrize(
    ("n", "b", "layer"), [(64, 4, 0), (64, 4, 1), (64, 4, 2), (2048, 64, 1), (96, 8, 2), (1024, 32, 3)]
)
def test_groups_equal_official_regrouping(n, b, layer):
    s = official_stride(n, b, layer)
    assert butterfly_geometry(n, b, layer)[0] == s
    dense = butterfly_groups(n, b, layer).to_dense()[0]
    groups = official_groups(n, b, s)
    expected = torch.zeros(n, n, dtype=torch.bool)
    for g in groups:
        expected[g[:, None], g[None, :]] = True
    assert torch.equal(dense, expected)
    assert dense.sum(-1).eq(b).all()


def test_float_stage_count_quirk_b1():
    # official: N=125, b=5 -> 4 float stages, strides [1, 5, 25, 25]; integer log: 3 stages
    strides = [butterfly_geometry(125, 5, layer, float_stage_count=True)[0] for layer in range(4)]
    assert strides == [1, 5, 25, 25]
    assert [butterfly_geometry(125, 5, layer)[0] for layer in range(4)] == [1, 5, 25, 1]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "b", "stage"), [(50, 4, 0), (50, 4, 1), (50, 4, 2), (37, 3, 1)])
def test_matches_dense_reference_fp32_outputs_and_grads(n, b, stage, causal):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(n)[None] < torch.tensor([[n], [n - 9]])
    kw = dict(mask=mask, causal=causal, block_size=b, stage=stage)
    out = butterfly_attention(q, k, v, **kw)
    ref = naive_butterfly_attention(*(t.double() for t in (q, k, v)), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-5, atol=1e-5)


def test_stage_changes_the_output_and_dense_mask_has_b_keys():
    q = torch.randn(1, 1, 64, 8)
    assert not torch.allclose(
        butterfly_attention(q, q, q, block_size=4, stage=0), butterfly_attention(q, q, q, block_size=4, stage=1)
    )


@pytest.mark.parametrize(
    ("opts", "error", "match"),
    [
        (dict(block_size=1), ValueError, "block_size must be >= 2"),
        (dict(stage=-1), ValueError, "stage must be >= 0"),
        (dict(float_stage_count=1), TypeError, "float_stage_count must be (a )?bool"),
        (dict(executor="x"), ValueError, "executor must be one of"),
    ],
)
def test_bad_options(opts, error, match):
    with pytest.raises(error, match=match):
        attnzoo.build("butterfly", 32, 4, **opts)


def test_model_layers_get_official_strides():
    cfg = ModelConfig(attention="butterfly", attention_options={"block_size": 8}, num_layers=7)
    stages = [cfg.layer_spec(i)[1]["stage"] for i in range(7)]
    assert stages == list(range(7))
    strides = [butterfly_geometry(256, 8, s)[0] for s in stages]
    assert strides == [1, 8, 32, 1, 8, 32, 1]  # spec official-code-behaviour §4
    fixed = ModelConfig(attention="butterfly", attention_options={"stage": 1}, num_layers=2)
    assert [fixed.layer_spec(i)[1]["stage"] for i in range(2)] == [1, 1]


class OfficialButterflyAttention(nn.Module):
    """Solving-LRA-PathX: regroup (view/swap), LRA ``Attention`` (W_q/W_k/W_v, -1e6 key mask, ff), ungroup."""

    def __init__(self, dim: int, heads: int, radix: int, layer_index: int) -> None:
        super().__init__()
        self.h, self.d, self.b, self.layer = heads, dim // heads, radix, layer_index
        self.W_q, self.W_k, self.W_v, self.ff = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bsz, n, dim = x.shape
        b = self.b
        assert n % b == 0
        s = official_stride(n, b, self.layer)
        xg = x.view(bsz, n // (b * s), b, s, dim).transpose(2, 3).reshape(-1, b, dim)
        mg = mask.view(bsz, n // (b * s), b, s).transpose(2, 3).reshape(-1, b)

        def heads(t):
            return t.view(t.shape[0], b, self.h, self.d).transpose(1, 2)

        q, k, v = heads(self.W_q(xg)), heads(self.W_k(xg)), heads(self.W_v(xg))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d) - 1e6 * (1 - mg[:, None, None, :])
        out = (F.softmax(scores, -1) @ v).transpose(1, 2).reshape(-1, b, dim)
        out = self.ff(out)
        return out.view(bsz, n // (b * s), s, b, dim).transpose(2, 3).reshape(bsz, n, dim)


@pytest.mark.parametrize(("n", "radix", "layer"), [(64, 8, 0), (64, 8, 1), (128, 8, 2), (96, 8, 2)])
def test_from_official_matches_solving_lra_pathx(n, radix, layer):
    torch.manual_seed(3)
    official = OfficialButterflyAttention(32, 4, radix, layer).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.4)
    args = {"butterfly_radix": radix, "layer_index": layer}
    ours = attnzoo.from_official(
        "solving-lra-pathx", "butterfly", dim=32, num_heads=4, args=args, state_dict=official.state_dict()
    ).eval()
    x = torch.randn(2, n, 32)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 13 :] = False
    expected = official(x, mask.float())
    got = ours(x, mask)
    real = mask[..., None].expand_as(got)
    scale = expected[real].abs().max()
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * scale + 1e-6


def test_from_official_rejects_unknown_tensors_and_arguments():
    sd = OfficialButterflyAttention(32, 4, 8, 0).state_dict()
    with pytest.raises(ValueError, match="unexpected official tensors"):
        attnzoo.from_official(
            "solving-lra-pathx", "butterfly", dim=32, num_heads=4, state_dict={**sd, "junk": sd["ff.bias"]}
        )
    with pytest.raises(ValueError, match="unknown argument"):
        attnzoo.from_official("solving-lra-pathx", "butterfly", dim=32, num_heads=4, args={"radix": 8})
