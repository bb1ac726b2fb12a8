"""Dense reference of ``nystrom``: one sequence at a time, landmarks by Python slicing, explicit matrices."""

from __future__ import annotations

import torch
from torch import Tensor

from attnzoo.ops.nystrom.nystrom import check_nystrom_args

__all__ = ["naive_nystrom_attention"]


def _segments(n: int, m: int) -> list[tuple[int, int]]:
    """Nystromformer's split of n tokens into m contiguous segments (shorter ones first)."""
    per, short = n // m, (n // m + 1) * m - n
    sizes = [per] * short + [per + 1] * (m - short)
    starts = [sum(sizes[:i]) for i in range(m)]
    return [(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def _pinv(a: Tensor, iterations: int, norm: Tensor) -> Tensor:
    z, eye = a.transpose(-1, -2) / norm, torch.eye(a.shape[-1], dtype=a.dtype)
    for _ in range(iterations):
        z = 0.25 * z @ (13 * eye - a @ z @ (15 * eye - a @ z @ (7 * eye - a @ z)))
    return z


def naive_nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    query_mask: Tensor | None = None,
    causal: bool = False,
    num_landmarks: int = 64,
    pinv_iterations: int = 6,
    conv_weight: Tensor | None = None,
    compat: str = "none",
) -> Tensor:
    """Nystromformer per sequence: gather the real queries and keys, landmarks as slice means, explicit softmaxes.

    Args: as :func:`attnzoo.ops.nystrom.nystrom_attention`.

    Returns:
        ``(B, H, N, dv)``.
    """
    query_mask = check_nystrom_args(q, k, v, mask, causal, conv_weight, compat, query_mask)
    b, h, n, d = q.shape
    s_len, m, lra = k.shape[-2], num_landmarks, compat == "nystromformer-lra"
    q_real = torch.ones(b, n, dtype=torch.bool) if query_mask is None else query_mask.cpu()
    k_real = torch.ones(b, s_len, dtype=torch.bool) if mask is None else mask.cpu()
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype)
    pending = []
    for i in range(b):
        iq = torch.arange(n) if lra else q_real[i].nonzero()[:, 0]
        ik = torch.arange(s_len) if lra else k_real[i].nonzero()[:, 0]
        keep_q, keep_k = q_real[i, iq].to(q.dtype)[None, :, None], k_real[i, ik].to(q.dtype)[None, :, None]
        qi, ki = q[i][:, iq] * d**-0.25 * keep_q, k[i][:, ik] * d**-0.25 * keep_k  # (H, n_i, d), (H, s_i, d)
        key_bias = torch.zeros(len(ik), dtype=q.dtype).masked_fill(keep_k[0, :, 0] == 0, float("-inf"))
        if min(len(iq), len(ik)) <= m:
            probs = torch.softmax(qi @ ki.transpose(-1, -2) + key_bias, dim=-1).nan_to_num(0.0)
            out[i][:, iq] = probs @ v[i][:, ik]
            continue
        q_land = torch.stack([qi[:, s:e].mean(1) for s, e in _segments(len(iq), m)], dim=1)
        k_land = torch.stack([ki[:, s:e].mean(1) for s, e in _segments(len(ik), m)], dim=1)
        f = torch.softmax(qi @ k_land.transpose(-1, -2), dim=-1)
        a = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
        bk = torch.softmax(q_land @ ki.transpose(-1, -2) + key_bias, dim=-1)
        pending.append((i, iq, ik, f, a, bk))
    if pending:
        col_max = torch.stack([a.sum(-2).amax(-1) for *_, a, _ in pending])  # (items, H)
        for j, (i, iq, ik, f, a, bk) in enumerate(pending):
            norm = col_max.amax() if lra else col_max[j][:, None, None]
            out[i][:, iq] = f @ _pinv(a, pinv_iterations, norm) @ (bk @ v[i][:, ik])
    if conv_weight is not None:
        width = conv_weight.shape[2]
        v_real = torch.nn.functional.pad(v * k_real[:, None, :, None].to(v.dtype), (0, 0, width // 2, width // 2))
        taps = conv_weight[:, 0, :, 0].to(v.dtype)  # (H, K)
        out = out + sum(taps[None, :, t, None, None] * v_real[:, :, t : t + n] for t in range(width))
    return out * q_real[:, None, :, None].to(out.dtype)
