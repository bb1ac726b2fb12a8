"""Input validation with errors that name the argument, its shape and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_padding_mask", "check_qkv"]


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, cross: bool = True) -> None:
    """Check q, k, v of shapes ``(B, H, N, d)``, ``(B, H, S, d)``, ``(B, H, S, dv)``.

    Args:
        cross: allow S != N. Mechanisms that only do self-attention pass ``False``.

    Raises:
        ValueError: wrong rank, mismatched batch/heads/lengths/widths, or S != N when ``cross`` is off.
        TypeError: non-floating dtypes, mixed dtypes or devices.
    """
    try:  # the common case in one expression; the loop below names what is wrong
        ok = (
            q.dim() == k.dim() == v.dim() == 4
            and q.dtype == k.dtype == v.dtype
            and q.is_floating_point()
            and q.device == k.device == v.device
            and q.shape[:2] == k.shape[:2]
            and k.shape[:3] == v.shape[:3]
            and q.shape[3] == k.shape[3]
            and (cross or q.shape[2] == k.shape[2])
        )
    except AttributeError:
        ok = False
    if not ok:
        _explain_qkv(q, k, v, cross)


def _explain_qkv(q: Tensor, k: Tensor, v: Tensor, cross: bool) -> None:
    """Raise the error of :func:`check_qkv` that names the first problem."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, d) (4 dims), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise TypeError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            "q, k, v must agree on (B, H) and k, v on S: "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head width d, got {q.shape[-1]} and {k.shape[-1]}")
    if not cross and q.shape[2] != k.shape[2]:
        raise ValueError(f"this mechanism does self-attention only: q has N={q.shape[2]}, k has S={k.shape[2]}")


def check_padding_mask(
    mask: Tensor | None, batch: int, length: int, device: torch.device, *, axis: str = "N"
) -> Tensor | None:
    """Validate a padding mask of shape ``(B, N)``, bool, True = real token; returns it (or ``None``).

    ``axis`` names the masked length in messages (``"S"`` for the keys of cross-attention).

    Raises:
        TypeError: not a bool tensor, or on another device.
        ValueError: wrong shape.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor of shape (B, N), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real token), got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask must have shape (B, {axis}) = ({batch}, {length}), got {tuple(mask.shape)}")
    if mask.device != device:
        raise TypeError(f"mask is on {mask.device} but the inputs are on {device}")
    return mask
