"""The fused non-causal FAVOR+ path (softmax kernel, no feature eps): one autograd node, few passes.

Same math as the generic engine (:mod:`attnzoo.ops.linear.kernel`) for the default settings, with the
work arranged for CPU memory traffic: the ``-s|x|^2/2`` term rides in the projection GEMM (x gets one
extra column), the normaliser rides in the value GEMM (v gets a column of ones), stabilisers are
row/chunk maxima that cancel exactly (``eps = 0``), features are exponentiated in place, and the
backward pass is written out (``dP = dphi * phi``; the norm term's gradient is the extra column of
``dP W_ext^T``) instead of recorded elementwise. Work goes in chunks of tokens, so no temporary grows
with N; the features are kept for the backward pass (O(N m) memory, as autograd would).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["favor_attention_fused"]


def _extend(x: Tensor, scale: float) -> Tensor:
    """``[x, s |x|^2 / 2]``: (..., d + 1)."""
    return torch.cat([x, x.square().sum(-1, keepdim=True) * (scale / 2)], dim=-1)


def _grad_input(d_p: Tensor, w_ext: Tensor, x: Tensor, scale: float) -> Tensor:
    """d/dx of ``[x, s|x|^2/2] @ w_ext`` given ``d_p``: the last column carries the norm term."""
    d_ext = d_p @ w_ext.transpose(-1, -2)
    return d_ext[..., :-1] + d_ext[..., -1:] * scale * x


class _FusedFavor(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, w_ext: Tensor, mask: Tensor | None, scale: float, chunk: int
    ) -> Tensor:
        ones = v.new_ones(*v.shape[:-1], 1)
        key_feats, sums, log_scales = [], [], []
        for start in range(0, k.shape[-2], chunk):
            stop = start + chunk
            p = _extend(k[:, :, start:stop], scale) @ w_ext  # (B, H, C, m): sqrt(s) W k - s|k|^2/2
            if mask is not None:
                p.masked_fill_(~mask[:, None, start:stop, None], float("-inf"))
            top = p.amax(dim=(-2, -1), keepdim=True)
            top = top.masked_fill(top == float("-inf"), 0.0) if mask is not None else top
            feats = p.sub_(top).exp_()
            key_feats.append(feats)
            sums.append(feats.transpose(-1, -2) @ torch.cat([v[:, :, start:stop], ones[:, :, start:stop]], -1))
            if mask is not None:  # a chunk without real keys contributes nothing
                top = top.masked_fill(~mask[:, None, start:stop].any(-1)[..., None, None], float("-inf"))
            log_scales.append(top)
        scales = torch.stack(log_scales)  # (T, B, H, 1, 1)
        frame = scales.amax(0)
        frame = frame.masked_fill(frame == float("-inf"), 0.0)
        weights = torch.exp(scales - frame)
        kvz = (torch.stack(sums) * weights).sum(0)  # (B, H, m, dv + 1): [sum phi(k) v^T | sum phi(k)]
        outs, query_feats, inverses = [], [], []
        for start in range(0, q.shape[-2], chunk):
            p = _extend(q[:, :, start : start + chunk], scale) @ w_ext
            feats = p.sub_(p.amax(-1, keepdim=True)).exp_()
            nd = feats @ kvz
            den = nd[..., -1:]
            inv = torch.where(den > 0, 1.0 / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
            outs.append(nd[..., :-1] * inv)
            query_feats.append(feats)
            inverses.append(inv)
        out = torch.cat(outs, dim=-2)
        ctx.save_for_backward(q, k, v, w_ext, kvz, weights, out)
        ctx.feats = (query_feats, key_feats, inverses)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, w_ext, kvz, weights, out = ctx.saved_tensors
        query_feats, key_feats, inverses = ctx.feats
        scale, chunk = ctx.scale, ctx.chunk
        dq, dkvz = [], torch.zeros_like(kvz)
        for i, start in enumerate(range(0, q.shape[-2], chunk)):
            stop = start + chunk
            g, o, inv, feats = grad[:, :, start:stop], out[:, :, start:stop], inverses[i], query_feats[i]
            d_nd = torch.cat([g * inv, -(g * o).sum(-1, keepdim=True) * inv], dim=-1)  # d(num), d(den)
            dkvz += feats.transpose(-1, -2) @ d_nd
            d_p = (d_nd @ kvz.transpose(-1, -2)).mul_(feats)
            dq.append(_grad_input(d_p, w_ext, q[:, :, start:stop], scale))
        dk, dv = [], []
        ones = v.new_ones(*v.shape[:-1], 1)
        for i, start in enumerate(range(0, k.shape[-2], chunk)):
            stop = start + chunk
            dkvz_c = dkvz * weights[i]
            feats = key_feats[i]
            dv.append((feats @ dkvz_c)[..., :-1])
            v1 = torch.cat([v[:, :, start:stop], ones[:, :, start:stop]], -1)
            d_p = (v1 @ dkvz_c.transpose(-1, -2)).mul_(feats)
            dk.append(_grad_input(d_p, w_ext, k[:, :, start:stop], scale))
        ctx.feats = None
        return torch.cat(dq, -2), torch.cat(dk, -2), torch.cat(dv, -2), None, None, None, None


def favor_attention_fused(
    q: Tensor, k: Tensor, v: Tensor, projection: Tensor, mask: Tensor | None, scale: float, chunk: int
) -> Tensor:
    """Non-causal FAVOR+ with the softmax kernel and ``eps = 0`` (see the module docstring).

    Args:
        q: ``(B, H, N, d)``; k: ``(B, H, S, d)``; v: ``(B, H, S, dv)`` (fp32 or fp64).
        projection: ``W``, ``(H, m, d)`` (no gradient flows to it).
        mask: ``(B, S)`` bool, True = real key, or None.
        scale: temperature s; chunk: tokens per chunk.

    Returns:
        ``(B, H, N, dv)``; rows without a real key are 0.
    """
    w = projection.detach().to(q.dtype) * scale**0.5
    w_ext = torch.cat([w, -torch.ones_like(w[..., :1])], dim=-1).transpose(-1, -2)  # (H, d + 1, m)
    return _FusedFavor.apply(q, k, v, w_ext, mask, scale, chunk)
