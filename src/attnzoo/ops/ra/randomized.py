"""RA: randomized attention (efficient-attention ``RandomizedAttention``), one adaptive sample per query."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.options import check_int

__all__ = ["ra_attention", "sample_key_index"]


def _key_bias(k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``(B, H|1, 1, N)`` additive key term ``-s |k|^2 / 2``, a huge negative number at padded keys."""
    bias = (-0.5 * scale) * k.square().sum(-1)[:, :, None, :]
    if mask is not None:
        bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(k.dtype).min / 4)
    return bias


@torch.no_grad()
def sample_key_index(
    q: Tensor, k: Tensor, mask: Tensor | None, scale: float, generator: torch.Generator | None
) -> Tensor:
    """One key index per query drawn from ``softmax_m(s q_n . k_m)`` over real keys: ``(B, H, N)`` long.

    Draws on the CPU with ``generator`` (one ``torch.multinomial`` over ``B*H*N`` rows, the official draw).
    """
    logits = scale * q @ k.transpose(-1, -2)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits.double(), dim=-1).nan_to_num(1.0).cpu()
    b, h, n, s = probs.shape
    return torch.multinomial(probs.reshape(-1, s), 1, generator=generator).view(b, h, n).to(q.device)


def ra_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    num_samples: int = 1,
    key_index: Tensor | None = None,
    noise: Tensor | None = None,
    seed: int = 0,
    compat: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Randomized attention: ``y_n = sum_m softmax_m(l(w_n, k_m)) v_m`` with one sample ``w_n`` per query.

    ``l(w, k) = s w.k - s|k|^2/2``; ``w_n = mu_n (+ noise_n in training)`` with ``mu_n = q_n + m_n`` where
    ``m_n`` is the mean key (``num_samples=0``), the softmax-weighted key ``sum_m pi_nm k_m`` (``-1``), or one
    key drawn from ``pi_n = softmax(s q_n . K)`` (``>= 1``; the official code draws one whatever the value,
    in eval too). Time and memory O(N^2 d) (dense, like the official code). Zheng et al., ICML 2022;
    ``shared/specs/efficient-attention-eva-lara-longnet.md`` §8.

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token. Default: None.
        causal: must be False.
        num_samples: 0, -1 or >= 1 (see above).
        key_index: ``(B, H, N)`` long, the sampled keys; default: drawn with ``torch.Generator`` seeded ``seed``.
        noise: ``(B, H, N, d)`` training draws, None in eval.
        compat: efficient-attention's quirk E9 (the padding mask is ignored everywhere).
        scale: s, default ``d ** -0.5``.

    Returns:
        ``(B, H, N, d)``; rows of padded queries are 0.

    Raises:
        ValueError: ``causal=True``, ``num_samples < -1``, wrong draw shapes.

    Reference: :func:`attnzoo.ops.ra.naive_ra_attention`.
    """
    check_qkv(q, k, v, cross=False)
    if causal:
        raise ValueError("ra cannot be causal (the official RandomizedAttention is non-causal)")
    check_int("num_samples", num_samples, minimum=-1)
    b, h, n, d = q.shape
    mask = check_padding_mask(mask, b, n, q.device)
    if b == 0 or n == 0:
        return v * 0
    scale = d**-0.5 if scale is None else float(scale)
    keys = None if compat else mask
    if num_samples == 0:
        weights = torch.ones(b, n, dtype=k.dtype, device=k.device) if keys is None else keys.to(k.dtype)
        mean = (weights[:, None, :, None] * k).sum(2, keepdim=True) / weights.sum(-1).clamp(min=1)[:, None, None, None]
        mu = q + mean
    elif num_samples == -1:
        attn_mask = None if keys is None else keys[:, None, None, :]
        mu = q + F.scaled_dot_product_attention(q, k, k, attn_mask=attn_mask, scale=scale).nan_to_num(0.0)
    else:
        if key_index is None:
            key_index = sample_key_index(q, k, keys, scale, torch.Generator().manual_seed(seed))
        if tuple(key_index.shape) != (b, h, n):
            raise ValueError(f"key_index must have shape {(b, h, n)}, got {tuple(key_index.shape)}")
        mu = q + k.gather(2, key_index[..., None].expand(b, h, n, d))
    if noise is not None and tuple(noise.shape) != (b, h, n, d):
        raise ValueError(f"noise must have shape {(b, h, n, d)}, got {tuple(noise.shape)}")
    omega = mu if noise is None else mu + noise
    out = F.scaled_dot_product_attention(omega, k, v, attn_mask=_key_bias(k, keys, scale), scale=scale)
    return out if mask is None else out * mask[:, None, :, None].to(out.dtype)
