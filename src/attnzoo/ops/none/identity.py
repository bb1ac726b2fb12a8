"""The no-attention baseline of the LRA code: the output is the value projection itself."""

from __future__ import annotations

from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv

__all__ = ["none_attention"]


def none_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Return ``v`` unchanged: no token mixing at all (mlpen/Nystromformer LRA ``attn_type="none"``).

    Args:
        q, k: ``(B, H, N, d)``, checked but unused.
        v: ``(B, H, N, d)``.
        mask, causal: trivially honoured (each position uses only itself); padded rows are zeroed.

    Returns:
        ``(B, H, N, d)``.
    """
    check_qkv(q, k, v, cross=False)
    mask = check_padding_mask(mask, v.shape[0], v.shape[-2], v.device)
    return v if mask is None else v * mask[:, None, :, None].to(v.dtype)
