"""PSF-Attn's factor product on the chord pattern, O(N m^2 C), with a memory-lean custom backward.

Row i of every factor links to ``c_0(i) = i`` and ``c_j(i) = (i + 2^(j-1)) mod n`` (j = 1..m), n the
sequence's real length (spec DPBN §3.1). Each link is a bijection of the real positions, so one
factor application and its transpose are m + 1 gathers of ``(B, H, N, C)`` tensors (no N x N
matrix, no per-link scatter). When every sequence wraps at N (no padding to compact) the links of a
block of rows are one or two contiguous slices, so the products run by cache-sized row blocks on
views: 16k tokens, H = 8, C = 64, 12 factors fwd+bwd 13.0 s -> 3.2 s on the 2-core CPU.

Shape legend: B batch, H heads, N tokens, C value width, m factors, J = m + 1 links per row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.common.precision import fp32_core

__all__ = ["chord_offsets", "psf_attention"]


def chord_offsets(num_factors: int) -> list[int]:
    """Link offsets ``[0, 1, 2, 4, ..., 2^(m-1)]`` of the official ``get_chord_indices_assym``."""
    return [0] + [2 ** (j - 1) for j in range(1, num_factors + 1)]


ROW_BLOCK_BYTES = 512 * 2**10
"""Bytes of one row block of ``(B, H, rows, C)`` in the wrap-at-N kernels: small enough to stay in cache."""


def _wrapped_rows(x: Tensor, start: int, count: int) -> Tensor:
    """Rows ``(start + i) mod N`` for i < count of ``x (B, H, N, ...)``: a view unless they wrap."""
    n = x.shape[2]
    start %= n
    if start + count <= n:
        return x[:, :, start : start + count]
    return torch.cat([x[:, :, start:], x[:, :, : start + count - n]], dim=2)


class _Links:
    """The chord links of one call: ``maps=None`` when every sequence wraps at N (the factor products
    then run by row blocks, :func:`_apply_wrapped`), else gathers on
    per-sequence maps ``(J, B, 1, N, 1)`` (compacted real tokens wrap at their own length)."""

    def __init__(self, offsets: list[int], maps: tuple[Tensor, Tensor] | None) -> None:
        self.offsets, self.maps = offsets, maps

    def take(self, x: Tensor, j: int) -> Tensor:
        """``x[link_j(i)]`` for every row i."""
        if self.maps is None:
            return _wrapped_rows(x, self.offsets[j], x.shape[2])
        return x.gather(2, self.maps[0][j].expand_as(x))

    def give(self, x: Tensor, j: int) -> Tensor:
        """The transpose of :meth:`take` on the gather path (each link is a bijection of the real rows)."""
        assert self.maps is not None, "the wrap-at-N path transposes by row blocks (_apply_wrapped_backward)"
        return x.gather(2, self.maps[1][j].expand_as(x))


def _row_blocks(x: Tensor) -> list[tuple[int, int]]:
    """``(start, count)`` row blocks of ``x (B, H, N, C)`` of about :data:`ROW_BLOCK_BYTES` each."""
    n = x.shape[2]
    per_row = max(1, x.shape[0] * x.shape[1] * x.shape[3] * x.element_size())
    step = max(16, ROW_BLOCK_BYTES // per_row)
    return [(s, min(step, n - s)) for s in range(0, n, step)]


def _apply_wrapped(w: Tensor, x: Tensor, offsets: list[int]) -> Tensor:
    """``y[i] = sum_j w[i, j] x[(i + off_j) mod N]`` by row blocks (no rolled copies of x)."""
    out = torch.empty_like(x)
    for s, c in _row_blocks(x):
        block = out[:, :, s : s + c]
        torch.mul(w[:, :, s : s + c, 0, None], _wrapped_rows(x, s + offsets[0], c), out=block)
        for j in range(1, len(offsets)):
            block.addcmul_(w[:, :, s : s + c, j, None], _wrapped_rows(x, s + offsets[j], c))
    return out


def _apply_wrapped_backward(grad: Tensor, w: Tensor, x: Tensor, offsets: list[int]) -> tuple[Tensor, Tensor]:
    """``dw[i, j] = <grad[i], x[i + off_j]>`` and ``dx[i] = sum_j w[i - off_j, j] grad[i - off_j]`` (mod N)."""
    dw = torch.empty_like(w)
    dx = torch.empty_like(x)
    for s, c in _row_blocks(x):
        g = grad[:, :, s : s + c]
        block = dx[:, :, s : s + c]
        for j, off in enumerate(offsets):
            dw[:, :, s : s + c, j] = (g * _wrapped_rows(x, s + off, c)).sum(-1)
            w_rows, g_rows = _wrapped_rows(w[..., j, None], s - off, c), _wrapped_rows(grad, s - off, c)
            if j == 0:
                torch.mul(w_rows, g_rows, out=block)
            else:
                block.addcmul_(w_rows, g_rows)
    return dw, dx


class _ChordApply(torch.autograd.Function):
    """``y[i] = sum_j w[i, j] * x[link_j(i)]`` with the inverse links for ``dx`` (saves only w and x)."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, x: Tensor, links: _Links) -> Tensor:  # type: ignore[override]
        # w: (B, H, N, J); x: (B, H, N, C)
        ctx.save_for_backward(w, x)
        ctx.links = links
        if links.maps is None:
            return _apply_wrapped(w, x, links.offsets)
        out = torch.zeros_like(x)
        for j in range(w.shape[-1]):
            out.addcmul_(w[..., j, None], links.take(x, j))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        w, x = ctx.saved_tensors
        links: _Links = ctx.links
        if links.maps is None:
            return (*_apply_wrapped_backward(grad.contiguous(), w, x, links.offsets), None)
        dw = torch.empty_like(w)
        dx = torch.zeros_like(x)
        for j in range(w.shape[-1]):
            dw[..., j] = (grad * links.take(x, j)).sum(-1)
            dx += links.give(grad * w[..., j, None], j)
        return dw, dx, None


def _link_maps(lengths: Tensor, n: int, offsets: list[int]) -> tuple[Tensor, Tensor]:
    """Chord links on compacted positions: ``(J, B, 1, N, 1)`` forward and inverse gather indices.

    Position i < n_b links to ``(i + off) mod n_b``; positions past n_b (padding) link to themselves.
    """
    i = torch.arange(n, device=lengths.device)[None, :]
    size = lengths[:, None].clamp_min(1)
    real = i < lengths[:, None]
    fwd = [torch.where(real, (i + off) % size, i) for off in offsets]
    inv = [torch.where(real, (i - off) % size, i) for off in offsets]
    return torch.stack(fwd)[:, :, None, :, None], torch.stack(inv)[:, :, None, :, None]


@fp32_core
def psf_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    factors: Tensor | None = None,
    num_factors: int | None = None,
    use_residuals: bool = True,
    mix_padding: bool = False,
    scale: float | None = None,
) -> Tensor:
    """PSF-Attn mixing (RuslanKhalitov/SparseFactorization ``PSFNet``): ``V <- W_m (... W_1 V0)``.

    ``V_t = W_t V_(t-1) (+ V0 with use_residuals)`` for t = 1..m, each W_t sparse on the chord
    pattern with per-sample row values ``factors[:, :, t-1]`` (raw, signed, as the official networks
    give them). Without ``factors`` the values are a softmax, over each row's m + 1 links, of the scaled
    dot products ``<q_i, k_link(i)> * scale`` (the same for every factor): a parameter-free form for
    generic callers whose factors are row-stochastic, so ``|out| <= (m + 1) max |V0|`` in every dtype
    (raw dot products multiply out to ~1e5 at N = 256 and overflow fp16). The ``psf`` module passes
    the values its factor networks produce.

    Padding (``mix_padding=False``, the default): the chord pattern runs over each sequence's real
    tokens only (in order, wrapping at its real length), so pads change no real row and a padded
    sequence equals the same sequence alone. ``mix_padding=True`` is the official behaviour (no
    mask: pads are mixed like tokens, the pattern wraps at N; quirk P1). Padded rows return 0.

    Args:
        q, k: ``(B, H, N, d)``, used only without ``factors``.
        v: ``(B, H, N, C)``, the values V0.
        mask: bool ``(B, N)``, True = real token.
        causal: not supported (links wrap forward); True raises.
        factors: ``(B, H, m, N, m + 1)`` factor row values, link order ``(i, i+1, i+2, ..., i+2^(m-1))``.
        num_factors: m when ``factors`` is None (default ``max(1, ceil(log2 N))``).
        use_residuals: add V0 after every factor.
        scale: for the q.k factor values, default ``d ** -0.5``.

    Returns:
        ``(B, H, N, C)``, computed in fp32 at least with autocast off (``factors`` too), returned in the
        inputs' dtype or autocast's (:func:`attnzoo.ops.common.precision.fp32_core`).

    Raises:
        ValueError: ``causal``, a factors tensor of the wrong shape.

    Reference: :func:`attnzoo.ops.psf.naive_psf_attention`. Time O(N m^2 C), memory O(N m C).
    """
    check_qkv(q, k, v, cross=False)
    b, h, n, _ = v.shape
    mask = check_padding_mask(mask, b, n, v.device)
    if causal:
        raise ValueError("psf cannot be causal: chord links point forward and wrap around")
    m = factors.shape[2] if factors is not None else num_factors or max(1, math.ceil(math.log2(max(n, 2))))
    if factors is not None and tuple(factors.shape) != (b, h, m, n, m + 1):
        expected = (b, h, m, n, m + 1)
        raise ValueError(f"factors must have shape (B, H, m, N, m + 1) = {expected}, got {tuple(factors.shape)}")
    if b == 0 or n == 0:
        return v.clone()
    factors = None if factors is None else factors.to(v.dtype)
    compact = mask is not None and not mix_padding
    if compact:
        assert mask is not None
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        lengths = mask.sum(1)
        take = order[:, None, :, None]
        q, k, v = (t.gather(2, take.expand_as(t)) for t in (q, k, v))
        if factors is not None:
            factors = factors.gather(3, order[:, None, None, :, None].expand_as(factors))
    else:
        lengths = torch.full((b,), n, dtype=torch.long, device=v.device)
    offsets = chord_offsets(m)
    links = _Links(offsets, _link_maps(lengths, n, offsets) if compact else None)
    if factors is None:
        s = q.shape[-1] ** -0.5 if scale is None else scale
        dots = [(q * links.take(k, j)).sum(-1) * s for j in range(m + 1)]
        shared = torch.softmax(torch.stack(dots, -1), dim=-1)
        factor_list = [shared] * m
    else:
        factor_list = list(factors.unbind(2))
    real = (torch.arange(n, device=v.device)[None, :] < lengths[:, None])[:, None, :, None]  # (B, 1, N, 1)
    v0 = v
    out = v0
    for w in factor_list:
        out = _ChordApply.apply(w * real.to(w.dtype), out, links)
        if use_residuals:
            out = out + v0
    out = out * real.to(out.dtype)
    if compact:
        out = torch.zeros_like(out).scatter(2, take.expand_as(out), out)
    elif mask is not None:
        out = out * mask[:, None, :, None].to(out.dtype)
    return out
