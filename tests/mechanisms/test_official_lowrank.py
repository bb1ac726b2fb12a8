"""``from_official`` for the low-rank / kernel mechanisms: emulated official modules give the same outputs.

The official code is not installable here; these are small independent emulations written from the
specs (``shared/specs/diffuser-psf-butterfly-nystrom.md`` §5.1/5.3 and
``efficient-attention-eva-lara-longnet.md`` §1.1/§4, quirks in ``official-code-behaviour.md``):

* :class:`LraAttention` -- mlpen/Nystromformer ``LRA/code/attention.py`` ``Attention`` (``W_q W_k W_v ff``)
  with the kernels ``softmax`` (-1e6 key fill), ``none``, ``linear`` (elu+1 / N^(1/4), no normaliser),
  ``linformer`` (``E`` of shape (H, k, N) for K and V), ``nystrom`` (segment means with pads averaged in,
  global pinv init, conv skip) and ``performer`` (performer-pytorch ``softmax_kernel``: a global key max).
* :class:`EaKernelized` -- efficient-attention ``KernelizedAttention`` (``qkv``, ``proj``, buffer
  ``eval_proj``) with ``favorp`` (per-(b, h) key max including pads, clamp 1e-2) and ``relu``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnzoo
from attnzoo.ops.performer import draw_projection

F64 = torch.float64
D, H, N = 64, 2, 64
DH = D // H


def spread(module: nn.Module, seed: int, std: float = 0.4) -> nn.Module:
    """Redraw every parameter with a large spread so that logits are O(1) and quirks show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


class LraAttention(nn.Module):
    """mlpen/Nystromformer LRA ``Attention`` with one kernel (official parameter names)."""

    def __init__(self, kernel: str, m: int = 8, conv: int | None = None, rp_dim: int = 16) -> None:
        super().__init__()
        self.kernel, self.m = kernel, m
        self.W_q, self.W_k, self.W_v = (nn.Linear(D, D) for _ in range(3))
        self.ff = nn.Linear(D, D)
        self.attn = nn.Module()
        if kernel == "linformer":
            self.attn.E = nn.Parameter(torch.randn(H, m, N) * 0.02)
        if kernel == "nystrom" and conv:
            self.attn.conv = nn.Conv2d(H, H, (conv, 1), padding=(conv // 2, 0), bias=False, groups=H)
        if kernel == "performer":
            self.attn.attn_fn = nn.Module()
            proj = draw_projection(1, rp_dim, DH, generator=torch.Generator().manual_seed(7))[0]
            self.attn.attn_fn.register_buffer("projection_matrix", proj)

    def heads(self, x):
        return x.reshape(x.shape[0], x.shape[1], H, DH).transpose(1, 2)

    def forward(self, x, mask):  # mask: float, 1 = real
        q, k, v = self.heads(self.W_q(x)), self.heads(self.W_k(x)), self.heads(self.W_v(x))
        out = getattr(self, f"_{self.kernel}")(q.float(), k.float(), v.float(), mask.float())
        return self.ff(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], D))

    def _softmax(self, q, k, v, mask):
        dot = q @ k.transpose(-1, -2) / math.sqrt(DH) - 1e6 * (1 - mask[:, None, None, :])
        return torch.softmax(dot, -1) @ v

    def _none(self, q, k, v, mask):
        return v

    def _linear(self, q, k, v, mask):
        q = (F.elu(q) + 1) / math.sqrt(math.sqrt(q.size(2)))
        k = (F.elu(k) + 1) * mask[:, None, :, None] / math.sqrt(math.sqrt(k.size(2)))
        return q @ (k.transpose(-2, -1) @ (v * mask[:, None, :, None]))

    def _linformer(self, q, k, v, mask):
        k = self.attn.E @ (k * mask[:, None, :, None])
        v = self.attn.E @ (v * mask[:, None, :, None])
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DH), -1) @ v

    def _nystrom(self, q, k, v, mask):
        q = q * mask[:, None, :, None] / math.sqrt(math.sqrt(DH))
        k = k * mask[:, None, :, None] / math.sqrt(math.sqrt(DH))
        b, n, m = q.shape[0], q.shape[2], self.m
        q_l = q.reshape(b, H, m, n // m, DH).mean(-2)
        k_l = k.reshape(b, H, m, n // m, DH).mean(-2)
        k1 = torch.softmax(q @ k_l.transpose(-1, -2), -1)
        k2 = torch.softmax(q_l @ k_l.transpose(-1, -2), -1)
        k3 = torch.softmax(q_l @ k.transpose(-1, -2) - 1e9 * (1 - mask[:, None, None, :]), -1)
        eye = torch.eye(m)
        z = 1 / torch.max(torch.sum(k2, dim=-2)) * k2.transpose(-1, -2)
        for _ in range(6):
            kv = k2 @ z
            z = (0.25 * z) @ (13 * eye - kv @ (15 * eye - kv @ (7 * eye - kv)))
        out = (k1 @ z) @ (k3 @ v)
        if hasattr(self.attn, "conv"):
            out = out + self.attn.conv(v * mask[:, None, :, None])
        return out

    def _performer(self, q, k, v, mask):
        q, k, v = q / DH**0.25, k * mask[:, None, :, None] / DH**0.25, v * mask[:, None, :, None]
        proj = self.attn.attn_fn.projection_matrix

        def kernel(x, is_query):
            dash = torch.einsum("bhid,jd->bhij", DH**-0.25 * x, proj)
            diag = (x**2).sum(-1, keepdim=True) / 2 * DH**-0.5
            top = dash.max(-1, keepdim=True).values if is_query else dash.max()
            return proj.shape[0] ** -0.5 * (torch.exp(dash - diag - top) + 1e-4)

        qf, kf = kernel(q, True), kernel(k, False)
        d_inv = 1.0 / (qf @ kf.sum(-2)[..., None])
        return (qf @ (kf.transpose(-1, -2) @ v)) * d_inv


class EaKernelized(nn.Module):
    """efficient-attention ``KernelizedAttention`` (``default`` sample scheme, eval path)."""

    def __init__(self, proj_method: str = "favorp", m: int = 16) -> None:
        super().__init__()
        self.proj_method = proj_method
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.register_buffer("eval_proj", draw_projection(H, m, DH, generator=torch.Generator().manual_seed(3)))

    def forward(self, x, key_padding_mask):  # True = pad
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, H, DH).permute(2, 0, 3, 1, 4)
        w, m = self.eval_proj, self.eval_proj.shape[1]
        dash_q = torch.einsum("bhnd,hmd->bhnm", q, w) * DH**-0.25
        dash_k = torch.einsum("bhnd,hmd->bhnm", k, w) * DH**-0.25
        if self.proj_method == "favorp":
            phi_q = (
                m**-0.5
                * torch.exp(dash_q - (q**2).sum(-1, keepdim=True) / (2 * DH**0.5) - dash_q.amax(-1, keepdim=True))
                + 1e-4
            )
            phi_k = (
                m**-0.5
                * torch.exp(
                    dash_k - (k**2).sum(-1, keepdim=True) / (2 * DH**0.5) - dash_k.amax(dim=(-2, -1), keepdim=True)
                )
                + 1e-4
            )
        else:
            phi_q, phi_k = torch.relu(m**-0.5 * dash_q) + 1e-3, torch.relu(m**-0.5 * dash_k) + 1e-3
        phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        num = phi_q @ (phi_k.transpose(-1, -2) @ v)
        den = (phi_q @ phi_k.sum(-2)[..., None]).clamp(min=1e-2)
        out = (num / den).transpose(1, 2).reshape(b, n, D)
        return self.proj(out)


def _inputs():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, N, D, generator=gen)
    real = torch.arange(N)[None] < torch.tensor([[N], [40], [57]])
    return x, real


def _check(ours, official, x, real, official_mask):
    ours.eval(), official.eval()
    with torch.no_grad():
        y, y_off = ours(x, real), official(x, official_mask)
    scale = y_off[real].abs().max()
    assert (y[real] - y_off[real]).abs().max() <= 1e-5 * scale + 1e-6, (y[real] - y_off[real]).abs().max() / scale


LRA_CASES = [
    ("softmax", {}, {}),
    ("none", {}, {}),
    ("linear", {}, {}),
    ("linformer", {"linformer_k": 8}, {"m": 8}),
    ("nystrom", {"num_landmarks": 8, "conv_kernel_size": 35}, {"m": 8, "conv": 35}),
    ("nystrom", {"num_landmarks": 8}, {"m": 8}),  # no conv_kernel_size key: the official builds no conv
    ("nystrom", {"num_landmarks": 8, "conv_kernel_size": None}, {"m": 8}),
    ("performer", {"rp_dim": 16}, {"rp_dim": 16}),
]


@pytest.mark.parametrize(("name", "args", "emu"), LRA_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LRA_CASES)])
def test_nystromformer_lra_kernels(name, args, emu):
    official = spread(LraAttention(name, **emu), seed=1)
    config = {"transformer_dim": D, "num_head": H, "head_dim": DH, "max_seq_len": N, **args}
    ours = attnzoo.from_official(
        "nystromformer-lra", name, dim=D, num_heads=H, args=config, state_dict=official.state_dict()
    )
    if name == "nystrom":  # the Solving-LRA-PathX fork runs the same kernel
        fork = attnzoo.from_official(
            "solving-lra-pathx", name, dim=D, num_heads=H, args=config, state_dict=official.state_dict()
        )
        _check(fork, official, *_inputs(), _inputs()[1].float())
    x, real = _inputs()
    _check(ours, official, x, real, real.float())


def test_nystrom_conv_only_with_the_conv_kernel_size_key():
    """attention_nystrom.py: ``self.use_conv = "conv_kernel_size" in config``; an absent key means no conv."""
    absent = attnzoo.from_official("nystromformer-lra", "nystrom", dim=D, num_heads=H, args={"max_seq_len": N})
    assert absent.options.conv_kernel == 0 and absent.conv is None
    given = attnzoo.from_official(
        "nystromformer-lra", "nystrom", dim=D, num_heads=H, args={"max_seq_len": N, "conv_kernel_size": 35}
    )
    assert given.conv.weight.shape == (H, 1, 35, 1)


@pytest.mark.parametrize("proj_method", ["favorp", "relu"])
def test_efficient_attention_performer(proj_method):
    official = spread(EaKernelized(proj_method), seed=2)
    ours = attnzoo.from_official(
        "efficient-attention",
        "performer",
        dim=D,
        num_heads=H,
        args={"approx_attn_dim": 16, "proj_method": proj_method},
        state_dict=official.state_dict(),
    )
    assert ours.options.redraw == "step" and not ours.options.orthogonal  # official training draws
    x, real = _inputs()
    _check(ours, official, x, real, ~real)


@pytest.mark.parametrize(("name", "args", "emu"), [c for c in LRA_CASES if c[0] in ("linear", "nystrom", "performer")])
def test_quirk_options_matter(name, args, emu):
    """Negative controls: without the compatibility option the same weights give other outputs."""
    official = spread(LraAttention(name, **emu), seed=1)
    ours = attnzoo.from_official(
        "nystromformer-lra",
        name,
        dim=D,
        num_heads=H,
        args={"num_head": H, "max_seq_len": N, **args},
        state_dict=official.state_dict(),
    )
    plain = attnzoo.build(name, D, H, options=type(ours.options)(**{**vars(ours.options), "compat": "none"}))
    plain.load_state_dict(ours.state_dict())
    x, real = _inputs()
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x, real)[real], ours.eval()(x, real)[real], atol=1e-3)


def test_trainable_parameters_match_the_official_ones():
    cases = [
        ("linformer", {"linformer_k": 8}, {"m": 8}, {"e_proj"}),
        ("nystrom", {"num_landmarks": 8, "conv_kernel_size": 35}, {"m": 8, "conv": 35}, {"conv.weight"}),
        ("nystrom", {"num_landmarks": 8}, {"m": 8}, set()),
        ("performer", {"rp_dim": 16}, {"rp_dim": 16}, set()),
    ]
    base = {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    for name, args, emu, extra in cases:
        official = LraAttention(name, **emu)
        ours = attnzoo.from_official(
            "nystromformer-lra",
            name,
            dim=D,
            num_heads=H,
            args={"max_seq_len": N, **args},
            state_dict=official.state_dict(),
        )
        trained = {n for n, p in ours.named_parameters() if p.requires_grad}
        assert trained == base | extra, (name, trained)
        assert len(list(official.parameters())) == 8 + len(extra)  # W_q W_k W_v ff (+ E / conv), buffers apart


def test_bad_official_arguments():
    with pytest.raises(ValueError, match=r"unknown argument.*bogus.*official arguments"):
        attnzoo.from_official("nystromformer-lra", "nystrom", dim=D, num_heads=H, args={"bogus": 1})
    with pytest.raises(ValueError, match="has no causal mode"):
        attnzoo.from_official("nystromformer-lra", "linear", dim=D, num_heads=H, causal=True)
    with pytest.raises(ValueError, match="proj_method 'dpfp' is not supported"):
        attnzoo.from_official("efficient-attention", "performer", dim=D, num_heads=H, args={"proj_method": "dpfp"})
    with pytest.raises(ValueError, match="sequence length 80 exceeds its maximum length 64"):
        attnzoo.from_official("nystromformer-lra", "linformer", dim=D, num_heads=H, args={"max_seq_len": N})(
            torch.randn(1, 80, D)
        )


def test_official_table_lists_every_entry(tmp_path):
    from attnzoo.official.__main__ import main, render

    text = render()
    for entry in attnzoo.official.official_entries():
        assert f"| `{entry.name}` | `{entry.mechanism}` |" in text and f"## `{entry.source}`" in text
    main(["--out", str(tmp_path / "official.md")])
    assert (tmp_path / "official.md").read_text() == text
