"""``attnzoo.load_official``: checkpoints of the official implementations give the same outputs here.

The original code is not installable in CI, so this file holds independent, loop-based emulations
of the two official modules, written from the numbered steps of
``shared/specs/efficient-attention-eva-lara-longnet.md``:

* :class:`OfficialLocal` -- efficient-attention's ``LocalAttention`` (HKUNLP/efficient-attention @531ff51,
  spec §1.1 and §3): fused ``qkv`` with channels ordered (3, h, d), ``proj``, blockwise windows widened by
  e = max(1, w // 2), the 1D table ``[h, w, w+2e]``, the 2D (aliasing) index into a
  ``[2(w+e-1)(w+2e+1)+1, h]`` table, masked logits filled with -5e4, ``key_padding_mask`` True = padding.
* :class:`TorchscaleDilated` -- torchscale's ``DilatedAttention`` (spec §10.2, §10.5): ``q/k/v/out_proj``,
  optional ``inner_attn_ln``, per-branch zero padding (left unmasked), head-block offsets
  ``j // (H'/r)``, per-segment dense attention with explicit log-sum-exp, scatter (out 0, lse -1e8), mixture
  weights ``softmax_i(lse_i)`` computed under ``no_grad``.

Both emulations loop over blocks / tiles / heads / segments with plain tensor ops and share no code
with attnzoo. Weights are re-drawn with a large spread after construction so that logits are O(1)
and every bias / offset visibly changes the output (the negative controls below check this).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnzoo
from attnzoo.ops.dilated import naive_dilated_attention

F64 = torch.float64
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5}
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def scramble(module: nn.Module, seed: int, std: float = 0.4) -> nn.Module:
    """Overwrite every parameter with N(0, std^2) draws (LayerNorm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=F64) * std
            p.copy_((1.0 + noise) if name.endswith("ln.weight") else noise)
    return module


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL[expected.dtype], rtol=RTOL[expected.dtype])


# ---------------------------------------------------------------------------------------------------
# efficient-attention LocalAttention, emulated (spec §1.1, §3)
# ---------------------------------------------------------------------------------------------------


class OfficialLocal(nn.Module):
    """Loop-based re-implementation of efficient-attention's ``LocalAttention`` (official names)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        window_size: int = 2,
        attn_2d: bool = False,
        overlap_window: bool = False,
        use_rpe: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.window_size = window_size
        self.attn_2d = attn_2d
        self.ext = max(1, window_size // 2) if overlap_window else 0
        self.use_rpe = use_rpe if window_size > 0 else False
        w, e = window_size, self.ext
        if self.use_rpe:
            if attn_2d:
                size = 2 * (w + e - 1) * (w + 2 * e + 1) + 1
                self.local_relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
                index = torch.zeros(w * w, (w + 2 * e) ** 2, dtype=torch.long)
                for qh in range(w):
                    for qw in range(w):
                        for a in range(w + 2 * e):
                            for b in range(w + 2 * e):
                                kh, kw = a - e, b - e
                                index[qh * w + qw, a * (w + 2 * e) + b] = (qh - kh + w + e - 1) * (w + 2 * e) + (
                                    qw - kw + w + e - 1
                                )
                self.register_buffer("relative_position_index", index)
            else:
                self.local_relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, w, w + 2 * e))
            nn.init.trunc_normal_(self.local_relative_position_bias_table, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x: [B, N, C]`` or ``[B, H, W, C]``; ``key_padding_mask: [B, N]`` True = padding."""
        b, c = x.shape[0], x.shape[-1]
        seq_shape = x.shape[1:-1]
        x = x.reshape(b, -1, c)
        n, h, d = x.shape[1], self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # each [B, h, N, d]
        pad = torch.zeros(b, n, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.bool()
        out = self._attend_2d(q, k, v, pad) if self.attn_2d else self._attend_1d(q, k, v, pad)
        out = out.transpose(1, 2).reshape(b, *seq_shape, c)
        return self.proj(out)

    def _block(self, qb: Tensor, kb: Tensor, vb: Tensor, masked: Tensor, bias: Tensor | None) -> Tensor:
        logits = self.scale * qb @ kb.transpose(-1, -2)
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(masked[:, None, None, :], -5e4)
        return torch.softmax(logits, dim=-1) @ vb

    def _attend_1d(self, q: Tensor, k: Tensor, v: Tensor, pad: Tensor) -> Tensor:
        b, h, n, d = q.shape
        w, e = self.window_size, self.ext
        n_pad = math.ceil(n / w) * w
        # step 1: zero-pad q, k, v to a multiple of w; padded positions are padding
        q, k, v = (F.pad(t, (0, 0, 0, n_pad - n)) for t in (q, k, v))
        pad = F.pad(pad, (0, n_pad - n), value=True)
        out = q.new_zeros(b, h, n_pad, d)
        bias = self.local_relative_position_bias_table[None] if self.use_rpe else None
        for t in range(n_pad // w):
            # step 2: query block [tw, tw+w), key block [tw-e, tw+w+e); outside [0, N') = zero, masked
            pos = torch.arange(t * w - e, t * w + w + e)
            inside = (pos >= 0) & (pos < n_pad)
            kb = q.new_zeros(b, h, w + 2 * e, d)
            vb = q.new_zeros(b, h, w + 2 * e, d)
            masked = torch.ones(b, w + 2 * e, dtype=torch.bool)
            kb[:, :, inside], vb[:, :, inside], masked[:, inside] = (
                k[:, :, pos[inside]],
                v[:, :, pos[inside]],
                pad[:, pos[inside]],
            )
            # step 3: logits (+ table[h, i, j]), masked -> -5e4, softmax, times V
            out[:, :, t * w : (t + 1) * w] = self._block(q[:, :, t * w : (t + 1) * w], kb, vb, masked, bias)
        return out[:, :, :n]  # step 4: drop padded rows

    def _attend_2d(self, q: Tensor, k: Tensor, v: Tensor, pad: Tensor) -> Tensor:
        b, h, n, d = q.shape
        side = math.isqrt(n)
        assert side * side == n, "official LocalAttention 2D needs a square grid"
        w, e = self.window_size, self.ext
        assert side % w == 0, "official LocalAttention 2D needs H, W multiples of w"
        kw_ = w + 2 * e
        out = q.new_zeros(b, h, n, d)
        bias = None
        if self.use_rpe:
            table = self.local_relative_position_bias_table  # [entries, h]
            bias = table[self.relative_position_index.reshape(-1)].reshape(w * w, kw_ * kw_, h).permute(2, 0, 1)[None]
        for ty in range(side // w):
            for tx in range(side // w):
                rows = [(ty * w + i) * side + tx * w + j for i in range(w) for j in range(w)]  # row-major in tile
                # key tile: rows/columns [t*w - e, t*w + w + e), row-major slots; out-of-image slots masked
                y = (ty * w - e + torch.arange(kw_))[:, None].expand(kw_, kw_).reshape(-1)
                x = (tx * w - e + torch.arange(kw_))[None, :].expand(kw_, kw_).reshape(-1)
                inside = (y >= 0) & (y < side) & (x >= 0) & (x < side)
                pos = (y * side + x)[inside]
                kb = q.new_zeros(b, h, kw_ * kw_, d)
                vb = q.new_zeros(b, h, kw_ * kw_, d)
                masked = torch.ones(b, kw_ * kw_, dtype=torch.bool)
                kb[:, :, inside], vb[:, :, inside], masked[:, inside] = k[:, :, pos], v[:, :, pos], pad[:, pos]
                out[:, :, rows] = self._block(q[:, :, rows], kb, vb, masked, bias)
        return out


def build_local_pair(dim, heads, w, overlap, rpe, attn_2d=False, grid=None, seed=0, dtype=F64):
    """An official module with scrambled weights and an attnzoo ``local`` loaded from its state dict."""
    torch.manual_seed(seed)
    official = OfficialLocal(dim, heads, window_size=w, attn_2d=attn_2d, overlap_window=overlap, use_rpe=rpe)
    official = scramble(official, seed).to(dtype).eval()
    if grid is None:  # the official module's own grids (square): from_official builds and loads in one call
        args = {"window_size": w, "overlap_window": overlap, "use_rpe": rpe, "attn_2d": attn_2d}
        state = {k: v.float() for k, v in official.state_dict().items()}
        ours = attnzoo.from_official(
            "efficient-attention", "local", dim=dim, num_heads=heads, args=args, state_dict=state
        )
        return official, ours.to(dtype).eval()
    opts = {"image_height": grid[0], "image_width": grid[1]}
    ours = attnzoo.build(
        "local",
        dim,
        heads,
        mode="blockwise",
        window_size=w,
        overlap_window=overlap,
        use_rpe=rpe,
        attn_2d=attn_2d,
        **opts,
    )
    ours = ours.to(dtype).eval()
    returned = attnzoo.load_official(ours, official.state_dict())
    assert returned is ours
    return official, ours


def padding_mask(kind: str, b: int, n: int, seed: int) -> Tensor | None:
    """``(B, N)`` official polarity (True = padding); every sample keeps at least one real token."""
    if kind == "nomask":
        return None
    pad = torch.zeros(b, n, dtype=torch.bool)
    if kind == "tailpad":
        pad[1:, n - n // 3 - 1 :] = True
        return pad
    gen = torch.Generator().manual_seed(seed)
    pad = torch.rand(b, n, generator=gen) < 0.35
    pad[:, 0] = False
    return pad


LOCAL_1D = [
    pytest.param(32, 4, False, False, id="w4-N32-plain"),
    pytest.param(30, 4, False, False, id="w4-N30-plain"),
    pytest.param(32, 4, True, False, id="w4-N32-overlap"),
    pytest.param(30, 4, True, False, id="w4-N30-overlap"),
    pytest.param(30, 4, False, True, id="w4-N30-rpe"),
    pytest.param(32, 4, True, True, id="w4-N32-overlap-rpe"),
    pytest.param(37, 5, True, True, id="w5-N37-overlap-rpe"),
    pytest.param(64, 6, True, True, id="w6-N64-overlap-rpe"),
    pytest.param(5, 8, True, True, id="w8-N5-shorter-than-window"),
    pytest.param(9, 1, True, True, id="w1-N9-overlap-rpe"),
]


@pytest.mark.parametrize("mask_kind", ["nomask", "tailpad", "randompad"])
@pytest.mark.parametrize(("n", "w", "overlap", "rpe"), LOCAL_1D)
def test_local_1d_matches_official(n, w, overlap, rpe, mask_kind):
    dim, heads, b = 16, 2, 3
    official, ours = build_local_pair(dim, heads, w, overlap, rpe, seed=n * 10 + w)
    x = torch.randn(b, n, dim, dtype=F64, generator=torch.Generator().manual_seed(n))
    key_padding_mask = padding_mask(mask_kind, b, n, seed=w)
    with torch.no_grad():
        expected = official(x, key_padding_mask=key_padding_mask)
        got = ours(x, mask=None if key_padding_mask is None else ~key_padding_mask)
    assert got.shape == expected.shape == x.shape
    if key_padding_mask is None:
        assert_close(got, expected)
    else:
        real = ~key_padding_mask
        assert real.any() and not real.all()
        assert_close(got[real], expected[real])
        with torch.no_grad():  # negative control: the mask reaches real rows, so polarity matters
            assert (ours(x)[real] - expected[real]).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_local_1d_matches_official_dtypes(dtype):
    official, ours = build_local_pair(32, 4, 6, True, True, seed=3, dtype=dtype)
    x = torch.randn(2, 45, 32, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        assert_close(ours(x), official(x))


LOCAL_2D = [
    pytest.param(8, 4, True, True, id="8x8-w4-overlap-rpe"),
    pytest.param(6, 3, True, True, id="6x6-w3-overlap-rpe"),
    pytest.param(8, 2, True, True, id="8x8-w2-overlap-rpe"),
    pytest.param(8, 2, False, True, id="8x8-w2-rpe"),
    pytest.param(6, 2, True, False, id="6x6-w2-overlap"),
]


@pytest.mark.parametrize("grid_given", [True, False], ids=["image-size", "inferred-square"])
@pytest.mark.parametrize(("side", "w", "overlap", "rpe"), LOCAL_2D)
def test_local_2d_matches_official(side, w, overlap, rpe, grid_given):
    dim, heads, b = 16, 2, 2
    grid = (side, side) if grid_given else None
    official, ours = build_local_pair(dim, heads, w, overlap, rpe, attn_2d=True, grid=grid, seed=side + w)
    img = torch.randn(b, side, side, dim, dtype=F64, generator=torch.Generator().manual_seed(side))
    with torch.no_grad():
        expected = official(img)  # official takes [B, H, W, C]
        got = ours(img.reshape(b, side * side, dim))
    assert expected.shape == img.shape
    assert_close(got, expected.reshape(b, side * side, dim))


def test_local_2d_matches_official_with_padding_mask():
    side, dim, heads = 8, 16, 4
    official, ours = build_local_pair(dim, heads, 4, True, True, attn_2d=True, grid=(side, side), seed=11)
    x = torch.randn(2, side * side, dim, dtype=F64, generator=torch.Generator().manual_seed(11))
    key_padding_mask = padding_mask("randompad", 2, side * side, seed=11)
    with torch.no_grad():
        expected = official(x, key_padding_mask=key_padding_mask)  # 3D input: official infers the square
        got = ours(x, mask=~key_padding_mask)
    real = ~key_padding_mask
    assert_close(got[real], expected[real])


def test_official_2d_index_aliases_offsets_as_the_spec_says():
    """Sanity check of the emulation: w=7, e=0 has 169 (dy, dx) offsets but only 97 table entries."""
    official = OfficialLocal(16, 2, window_size=7, attn_2d=True, use_rpe=True)
    assert official.local_relative_position_bias_table.shape == (97, 2)
    index = official.relative_position_index
    assert index.shape == (49, 49)
    assert int(index.min()) == 0 and int(index.max()) == 96
    assert index.unique().numel() == 97 < 13 * 13


@pytest.mark.parametrize(("attn_2d", "w"), [pytest.param(False, 4, id="1d"), pytest.param(True, 4, id="2d")])
def test_local_rpe_table_matters(attn_2d, w):
    """Negative control: the loaded RPE table changes the output, so the equality above is not vacuous."""
    grid = (8, 8) if attn_2d else None
    official, ours = build_local_pair(16, 2, w, True, True, attn_2d=attn_2d, grid=grid, seed=5)
    x = torch.randn(2, 64, 16, dtype=F64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = official(x)
        assert_close(ours(x), expected)
        ours.rpe_table.zero_()
        assert (ours(x) - expected).abs().max() > 1e-3


def test_local_head_layout_matters():
    """Negative control: loading ``qkv`` with a (h, 3, d) channel order instead of (3, h, d) is detected."""
    official, ours = build_local_pair(16, 2, 4, True, False, seed=6)
    sd = official.state_dict()
    sd["qkv.weight"] = sd["qkv.weight"].reshape(3, 2, 8, 16).transpose(0, 1).reshape(48, 16)
    sd["qkv.bias"] = sd["qkv.bias"].reshape(3, 2, 8).transpose(0, 1).reshape(48)
    attnzoo.load_official(ours, sd)
    x = torch.randn(2, 32, 16, dtype=F64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (ours(x) - official(x)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# load_official errors
# ---------------------------------------------------------------------------------------------------


def test_load_official_rejects_wrong_shape_table():
    official = OfficialLocal(16, 2, window_size=4, overlap_window=False, use_rpe=True)  # table [2, 4, 4]
    ours = attnzoo.build("local", 16, 2, mode="blockwise", window_size=4, overlap_window=True, use_rpe=True)
    with pytest.raises(ValueError, match=r"shape mismatch.*rpe_table: \(2, 4, 4\) vs \(2, 4, 8\)"):
        attnzoo.load_official(ours, official.state_dict())


def test_load_official_rejects_2d_table_in_1d_module():
    official = OfficialLocal(16, 2, window_size=4, attn_2d=True, use_rpe=True)
    ours = attnzoo.build("local", 16, 2, mode="blockwise", window_size=4, use_rpe=True)
    with pytest.raises(ValueError, match=r"shape mismatch.*rpe_table"):
        attnzoo.load_official(ours, official.state_dict())


def test_load_official_rejects_softmax():
    ours = attnzoo.build("softmax", 16, 2)
    official = OfficialLocal(16, 2, window_size=4)
    with pytest.raises(TypeError, match="no official checkpoint format"):
        attnzoo.load_official(ours, official.state_dict())


@pytest.mark.parametrize(
    ("official_rpe", "ours_rpe", "match"),
    [
        pytest.param(True, False, r"unexpected \['rpe_table'\]", id="extra-table"),
        pytest.param(False, True, r"missing \['rpe_table'\]", id="missing-table"),
    ],
)
def test_load_official_names_missing_and_extra_tensors(official_rpe, ours_rpe, match):
    official = OfficialLocal(16, 2, window_size=4, use_rpe=official_rpe)
    ours = attnzoo.build("local", 16, 2, mode="blockwise", window_size=4, use_rpe=ours_rpe)
    with pytest.raises(ValueError, match=match):
        attnzoo.load_official(ours, official.state_dict())


def test_load_official_bias_free_qkv_is_reported():
    """Official ``qkv_bias=False`` checkpoints have no ``qkv.bias``; strict loading names it."""
    official = OfficialLocal(16, 2, qkv_bias=False, window_size=4)
    ours = attnzoo.build("local", 16, 2, mode="blockwise", window_size=4)
    with pytest.raises(ValueError, match=r"missing \['qkv.bias'\]"):
        attnzoo.load_official(ours, official.state_dict())


# ---------------------------------------------------------------------------------------------------
# torchscale DilatedAttention, emulated (spec §10.2)
# ---------------------------------------------------------------------------------------------------


class TorchscaleDilated(nn.Module):
    """Loop-based emulation of torchscale's ``DilatedAttention`` (flash path, self-attention)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        segment_length: tuple[int, ...],
        dilated_ratio: tuple[int, ...],
        subln: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.segment_length, self.dilated_ratio, self.causal = segment_length, dilated_ratio, causal
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=True)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)
        self.inner_attn_ln = nn.LayerNorm(dim) if subln else None

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = (proj(x).view(b, n, h, d) for proj in (self.q_proj, self.k_proj, self.v_proj))
        outs, lses = [], []
        for sl, dr in zip(self.segment_length, self.dilated_ratio, strict=True):
            out, lse = self._branch(q, k, v, sl, dr)
            outs.append(out)
            lses.append(lse)
        with torch.no_grad():  # step 6: torchscale computes the mixing weights without gradient
            max_lse = torch.stack(lses).max(0)[0]
            exps = [torch.exp(lse - max_lse) for lse in lses]
            total = torch.stack(exps).sum(0)
            weights = [e / total for e in exps]
        attn = sum(o * wt[..., None] for o, wt in zip(outs, weights, strict=True))
        attn = attn.reshape(b, n, c)  # step 7
        if self.inner_attn_ln is not None:
            attn = self.inner_attn_ln(attn)
        return self.out_proj(attn)

    def _branch(self, q: Tensor, k: Tensor, v: Tensor, sl: int, r: int) -> tuple[Tensor, Tensor]:
        """One (w, r) branch: ``[B, N, H, d]`` -> dense-row output ``[B, N, H, d]`` and lse ``[B, N, H]``."""
        b, n, h, d = q.shape
        w = min(sl, n)  # step 1: clip, zero-pad to a multiple of w (pads are NOT masked)
        n_pad = math.ceil(n / w) * w
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, n_pad - n)) for t in (q, k, v))
        per_seg = math.ceil(w / r)  # the segment is zero-padded to a multiple of r
        per_offset = math.ceil(h / r)  # H' / r with H' = ceil(H / r) * r
        out = q.new_zeros(b, n_pad, h, d)
        lse = q.new_full((b, n_pad, h), -1e8)
        causal_block = torch.ones(per_seg, per_seg, dtype=torch.bool).triu(1)
        for j in range(h):
            offset = j // per_offset  # step 2: torchscale head blocks
            for t in range(n_pad // w):
                # step 3: rows t*w + o + u*r; slots beyond the segment are zero vectors (unmasked)
                within = offset + torch.arange(per_seg) * r
                kept = within < w
                rows = t * w + within[kept]
                qs, ks, vs = (q.new_zeros(b, per_seg, d) for _ in range(3))
                qs[:, kept], ks[:, kept], vs[:, kept] = q[:, rows, j], k[:, rows, j], v[:, rows, j]
                # step 4: dense softmax with explicit log-sum-exp
                logits = self.scaling * qs @ ks.transpose(-1, -2)
                if self.causal:
                    logits = logits.masked_fill(causal_block, float("-inf"))
                seg_lse = torch.logsumexp(logits, dim=-1)
                seg_out = torch.softmax(logits, dim=-1) @ vs
                # step 5: scatter back
                out[:, rows, j], lse[:, rows, j] = seg_out[:, kept], seg_lse[:, kept]
        return out[:, :n], lse[:, :n]


def build_dilated_pair(dim, heads, segments, rates, subln, causal, seed=0, detach_mixing=True):
    torch.manual_seed(seed)
    emu = scramble(TorchscaleDilated(dim, heads, segments, rates, subln=subln, causal=causal), seed).double().eval()
    if detach_mixing:  # torchscale's own behaviour: from_official, with the official argument strings
        args = {"segment_length": str(list(segments)), "dilated_ratio": str(list(rates)), "subln": subln}
        ours = attnzoo.from_official(
            "torchscale",
            "dilated_attention",
            dim=dim,
            num_heads=heads,
            causal=causal,
            args=args,
            state_dict={k: v.float() for k, v in emu.state_dict().items()},
        )
        return emu, ours.double().eval()
    ours = attnzoo.build(
        "dilated",
        dim,
        heads,
        causal=causal,
        segment_lengths=segments,
        dilation_rates=rates,
        subln=subln,
        detach_mixing=detach_mixing,
    )
    ours = ours.double().eval()
    assert attnzoo.load_official(ours, emu.state_dict()) is ours
    return emu, ours


# (N, dim, heads, segment_lengths, dilation_rates, subln); N is a multiple of every clipped w, w of r.
DILATED = [
    pytest.param(32, 16, 4, (4, 8), (1, 2), False, id="H4-r12-N32"),
    pytest.param(32, 16, 4, (4, 8), (1, 2), True, id="H4-r12-N32-subln"),
    pytest.param(24, 24, 3, (4, 8), (1, 2), False, id="H3-r12-N24-H-not-div-r"),
    pytest.param(32, 24, 3, (4, 8, 16), (1, 2, 4), True, id="H3-r124-N32-unused-offset-subln"),
    pytest.param(32, 16, 4, (2, 8, 16, 64), (1, 2, 4, 8), False, id="H4-r1248-w64-clipped-to-N"),
    pytest.param(36, 16, 2, (3, 12), (1, 3), False, id="H2-r13-N36"),
    pytest.param(32, 16, 1, (4, 8), (2, 4), False, id="H1-r24-rows-uncovered"),
]
CAUSAL = [pytest.param(False, id="bidir"), pytest.param(True, id="causal")]


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize(("n", "dim", "heads", "segments", "rates", "subln"), DILATED)
def test_dilated_matches_torchscale(n, dim, heads, segments, rates, subln, causal):
    emu, ours = build_dilated_pair(dim, heads, segments, rates, subln, causal, seed=n + heads)
    x = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        expected = emu(x)
        got = ours(x)
    assert got.shape == expected.shape == x.shape
    assert_close(got, expected)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize(
    ("n", "dim", "heads", "segments", "rates", "subln"),
    [DILATED[0], DILATED[3], DILATED[6]],
)
def test_dilated_input_gradients_match_torchscale(n, dim, heads, segments, rates, subln, causal):
    emu, ours = build_dilated_pair(dim, heads, segments, rates, subln, causal, seed=n + heads)
    x = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(n))
    cotangent = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(n + 1))
    x_emu, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    (emu(x_emu) * cotangent).sum().backward()
    (ours(x_ours) * cotangent).sum().backward()
    assert x_emu.grad.abs().max() > 0
    assert_close(x_ours.grad, x_emu.grad)
    emu_qkv_grad = torch.cat([emu.q_proj.weight.grad, emu.k_proj.weight.grad, emu.v_proj.weight.grad])
    assert_close(ours.qkv.weight.grad, emu_qkv_grad)
    assert_close(ours.proj.weight.grad, emu.out_proj.weight.grad)


@pytest.mark.parametrize("causal", CAUSAL)
def test_dilated_detach_mixing_changes_only_gradients(causal):
    """``detach_mixing=False``: same forward, different input gradients, equal to the dense reference's."""
    n, dim, heads, segments, rates = 32, 16, 4, (4, 8, 16), (1, 2, 4)
    _, detached = build_dilated_pair(dim, heads, segments, rates, False, causal, seed=21, detach_mixing=True)
    exact = attnzoo.build(
        "dilated", dim, heads, causal=causal, segment_lengths=segments, dilation_rates=rates, detach_mixing=False
    ).double()
    exact.load_state_dict(detached.state_dict())
    x = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(21))
    cotangent = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(22))
    grads, outs = [], []
    for module in (detached, exact):
        xi = x.clone().requires_grad_()
        out = module(xi)
        (out * cotangent).sum().backward()
        outs.append(out.detach())
        grads.append(xi.grad)
    assert_close(outs[1], outs[0])
    assert (grads[1] - grads[0]).abs().max() > 1e-4

    # the exact (non-detached) gradient is the dense multiplicity-mask reference's gradient
    xr = x.clone().requires_grad_()
    q, k, v = exact.project(xr)
    ref = exact.merge(naive_dilated_attention(q, k, v, causal=causal, segment_lengths=segments, dilation_rates=rates))
    (ref * cotangent).sum().backward()
    assert_close(outs[1], ref.detach())
    assert_close(grads[1], xr.grad)


@pytest.mark.parametrize("subln", [False, True], ids=["plain", "subln"])
def test_dilated_unpadded_length_differs_only_by_unmasked_pad_keys(subln):
    """N not a multiple of w: torchscale lets the zero pad keys into the last segment's softmax (bidirectional).

    attnzoo masks them, so the outputs differ (only in the last, padded segments), ours equals the dense
    reference, and with ``causal=True`` (pads come after every real row) the two agree again.
    """
    n, dim, heads, segments, rates = 30, 16, 4, (4, 8), (1, 2)
    x = torch.randn(2, n, dim, dtype=F64, generator=torch.Generator().manual_seed(30))

    emu, ours = build_dilated_pair(dim, heads, segments, rates, subln, causal=False, seed=30)
    with torch.no_grad():
        expected, got = emu(x), ours(x)
        q, k, v = ours.project(x)
        ref = ours.merge(naive_dilated_attention(q, k, v, segment_lengths=segments, dilation_rates=rates))
    assert_close(got, ref)
    diff = (got - expected).abs().amax(dim=(0, 2))
    assert diff.max() > 1e-3
    untouched = n - n % segments[-1]  # rows before the last (padded) segment of the longest branch
    assert diff[:untouched].max() < 1e-10

    emu_c, ours_c = build_dilated_pair(dim, heads, segments, rates, subln, causal=True, seed=30)
    with torch.no_grad():
        assert_close(ours_c(x), emu_c(x))


def test_dilated_offset_rule_matters():
    """Negative control: the paper's ``j mod r`` offsets do not reproduce torchscale's head blocks."""
    emu, ours = build_dilated_pair(16, 4, (4, 8), (1, 2), False, False, seed=8)
    paper = attnzoo.build("dilated", 16, 4, segment_lengths=(4, 8), dilation_rates=(1, 2), offset_rule="paper")
    paper = attnzoo.load_official(paper.double(), emu.state_dict())
    x = torch.randn(2, 32, 16, dtype=F64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = emu(x)
        assert_close(ours(x), expected)
        assert (paper(x) - expected).abs().max() > 1e-3


def test_load_official_dilated_rejects_non_torchscale_state_dict():
    emu = TorchscaleDilated(16, 4, (4, 8), (1, 2), subln=True)
    sd = {k: v for k, v in emu.state_dict().items() if not k.startswith("k_proj")}
    ours = attnzoo.build("dilated", 16, 4, segment_lengths=(4, 8), dilation_rates=(1, 2), subln=True)
    with pytest.raises(ValueError, match=r"not a torchscale DilatedAttention state dict: missing k_proj\.weight"):
        attnzoo.load_official(ours, sd)


def test_load_official_dilated_names_subln_mismatch():
    emu = TorchscaleDilated(16, 4, (4, 8), (1, 2), subln=True)
    plain = attnzoo.build("dilated", 16, 4, segment_lengths=(4, 8), dilation_rates=(1, 2))
    with pytest.raises(ValueError, match=r"unexpected \['inner_attn_ln.bias', 'inner_attn_ln.weight'\]"):
        attnzoo.load_official(plain, emu.state_dict())


def test_load_official_dilated_multiway_uses_branch_a():
    """torchscale ``multiway=True`` wraps every projection and the sub-LN as ``MultiwayNetwork(A, B)``."""
    emu, _ = build_dilated_pair(16, 4, (4, 8), (1, 2), True, False, seed=9)
    sd = {}
    for key, value in emu.state_dict().items():
        module, tensor = key.rsplit(".", 1)
        sd[f"{module}.A.{tensor}"] = value
        sd[f"{module}.B.{tensor}"] = torch.randn_like(value)  # the other modality's branch: must be ignored
    ours = attnzoo.build("dilated", 16, 4, segment_lengths=(4, 8), dilation_rates=(1, 2), subln=True).double()
    attnzoo.load_official(ours, sd)
    x = torch.randn(2, 32, 16, dtype=F64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert_close(ours(x), emu(x))


class OfficialSoftmax(nn.Module):
    """efficient-attention ``MultiheadAttention`` (spec EA 1.1): qkv (3, h, d) rows, key padding True = pad."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_from_official_efficient_attention_softmax(qkv_bias):
    official = scramble(OfficialSoftmax(16, 2, qkv_bias), 3).eval()
    ours = attnzoo.from_official(
        "efficient-attention",
        "softmax",
        dim=16,
        num_heads=2,
        args={"qkv_bias": qkv_bias},
        state_dict=official.state_dict(),
    ).eval()
    x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(1))
    pad = padding_mask("tailpad", 2, 11, seed=0)
    with torch.no_grad():
        expected, got = official(x, key_padding_mask=pad), ours(x, mask=~pad)
    assert_close(got[~pad], expected[~pad])


def test_from_official_rejects_unknown_sources_names_and_arguments():
    with pytest.raises(ValueError, match="unknown official source 'nope'"):
        attnzoo.from_official("nope", "local", dim=16, num_heads=2)
    with pytest.raises(ValueError, match="efficient-attention has no mechanism 'dilated'"):
        attnzoo.from_official("efficient-attention", "dilated", dim=16, num_heads=2)
    with pytest.raises(ValueError, match=r"unknown argument.*window"):
        attnzoo.from_official("efficient-attention", "local", dim=16, num_heads=2, args={"window": 3})
    with pytest.raises(ValueError, match="no causal mode"):
        attnzoo.from_official("efficient-attention", "local", dim=16, num_heads=2, causal=True)
    with pytest.raises(ValueError, match="flash_attention"):
        attnzoo.from_official("torchscale", "dilated_attention", dim=16, num_heads=2, args={"flash_attention": False})
    with pytest.raises(ValueError, match="segment_length must be a list of ints"):
        attnzoo.from_official("torchscale", "dilated_attention", dim=16, num_heads=2, args={"segment_length": "8"})


def test_from_official_local_defaults_are_the_cli_defaults():
    module = attnzoo.from_official("efficient-attention", "local", dim=16, num_heads=2)
    assert module.options.window_size == 4 and module.options.mode == "blockwise"
    dilated = attnzoo.from_official("torchscale", "dilated_attention", dim=16, num_heads=2)
    assert dilated.options.segment_lengths == (2048, 4096, 8192) and dilated.options.detach_mixing
    assert dilated.inner_attn_ln is not None  # torchscale's config default subln=True
