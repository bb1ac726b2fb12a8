"""Test helpers shared by the test suite and the benchmarks: one tolerance check, seeded inputs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assert_close", "assert_same_gradients", "make_qkv", "random_padding_mask"]


def assert_close(name: str, ref: Tensor, out: Tensor, tol: float) -> None:
    """Fail unless ``out`` matches ``ref``: RMS error <= ``tol * max(RMS(ref), 1)`` and max abs difference
    <= ``10 * tol * max(RMS(ref), 1)`` (relative for large references, absolute for near-zero ones).

    Raises:
        AssertionError: naming ``name``, on a shape mismatch, NaN/Inf in ``out`` where ``ref`` is finite,
            or an error above ``tol``.
    """
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    ref64, out64 = ref.detach().double(), out.detach().double()
    if not torch.equal(torch.isfinite(ref64), torch.isfinite(out64)):
        raise AssertionError(f"{name}: non-finite values differ from the reference")
    finite = torch.isfinite(ref64)
    diff = (ref64 - out64)[finite]
    scale = max(float(ref64[finite].pow(2).mean().sqrt()), 1.0) if finite.any() else 1.0
    rel_rms = float(diff.pow(2).mean().sqrt()) / scale if diff.numel() else 0.0
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if rel_rms > tol or max_abs > 10 * tol * scale:
        raise AssertionError(f"{name}: relative RMS error {rel_rms:.3e}, max abs diff {max_abs:.3e} (tol {tol:.1e})")


def assert_same_gradients(ref: Tensor, out: Tensor, inputs: tuple[Tensor, ...], tol: float, names: str = "qkv") -> None:
    """Fail unless ``sum(ref * g)`` and ``sum(out * g)``, for one random cotangent ``g``, have the same gradients
    with respect to ``inputs`` (each compared by :func:`assert_close`, named ``d`` + its letter in ``names``).

    Args:
        ref, out: the reference and the tested output, same shape, both depending on ``inputs``.
        inputs: the tensors to differentiate against (``requires_grad``).
        tol: as in :func:`assert_close`. names: one letter per input.
    """
    g = torch.randn_like(out)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs)
    out_grads = torch.autograd.grad((out * g).sum(), inputs)
    for name, a, b in zip(names, ref_grads, out_grads, strict=True):
        assert_close(f"d{name}", a, b, tol)


def make_qkv(
    batch: int,
    heads: int,
    length: int,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    requires_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded ``q, k, v`` of shape ``(B, H, N, d)``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, length, head_dim)
    return tuple(  # type: ignore[return-value]
        torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)
    )


def random_padding_mask(batch: int, length: int, *, seed: int = 0, empty_row: bool = False) -> Tensor:
    """``(B, N)`` bool, True = real token: random right-padding per sequence (at least one real token
    each, unless ``empty_row``, which makes the last sequence all padding)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if empty_row:
        mask[-1] = False
    return mask
