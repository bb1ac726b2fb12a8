"""Padding a length up to a multiple of a block size, and taking it off again."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_to_multiple"]


def pad_to_multiple(x: Tensor, multiple: int, *, dim: int = -2, value: float | bool = 0) -> Tensor:
    """Pad ``x`` along ``dim`` at the end so that its size is a multiple of ``multiple``.

    Args:
        x: any tensor, e.g. ``(B, H, N, d)`` with ``dim=-2`` or a mask ``(B, N)`` with ``dim=-1``.
        multiple: the block size (>= 1).
        value: fill value of the new entries.

    Returns:
        ``x`` itself when no padding is needed, else a padded copy; slice ``[..., :N, :]`` to unpad.
    """
    size = x.shape[dim]
    extra = -size % multiple
    if extra == 0:
        return x
    dim = dim % x.dim()
    pads = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return F.pad(x, pads, value=value)
