"""Test helpers shared by the test suite and the benchmarks: one tolerance check, seeded inputs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "assert_beats_trivial",
    "assert_close",
    "assert_same_gradients",
    "clustered_qkv",
    "make_qkv",
    "random_padding_mask",
    "relative_error",
    "trivial_errors",
]


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


def clustered_qkv(
    batch: int,
    heads: int,
    length: int,
    head_dim: int,
    *,
    clusters: int = 4,
    run: int = 64,
    sharpness: float = 2.0,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded ``q, k, v`` ``(B, H, N, d)`` whose exact softmax attention is far from uniform yet low-rank.

    Runs of ``run`` tokens each take one of ``clusters`` random directions (per batch item and head) of norm
    ``sharpness * d^(1/4)``, plus N(0, 0.3^2) noise, for q and k alike, so each query attends mostly to the
    keys of its cluster, near and far; values are the cluster's own random vector plus N(0, 1) noise. At the
    default sharpness uniform attention is off by ~0.8 relative (:func:`trivial_errors`). N must be a
    multiple of ``run``.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(batch, heads, clusters, head_dim, generator=gen, dtype=dtype)
    centres = centres / centres.norm(dim=-1, keepdim=True) * (sharpness * head_dim**0.25)
    ids = torch.randint(0, clusters, (length // run,), generator=gen).repeat_interleave(run)
    shape = (batch, heads, length, head_dim)
    q = centres[:, :, ids] + 0.3 * torch.randn(shape, generator=gen, dtype=dtype)
    k = centres[:, :, ids] + 0.3 * torch.randn(shape, generator=gen, dtype=dtype)
    values = torch.randn(batch, heads, clusters, head_dim, generator=gen, dtype=dtype)
    v = values[:, :, ids] + torch.randn(shape, generator=gen, dtype=dtype)
    return q, k, v


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` (Frobenius, over all elements, computed in fp64)."""
    ref64 = ref.detach().double()
    return float((out.detach().double() - ref64).norm() / ref64.norm())


def trivial_errors(exact: Tensor, v: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """Relative errors (:func:`relative_error`) of the trivial predictors of ``exact`` ``(B, H, N, dv)``:
    ``zero`` (the all-zero output, 1.0) and ``uniform`` (every row the mean of ``v`` ``(B, H, S, dv)`` over
    the real keys of ``mask`` ``(B, S)``, True = real, or over all keys: uniform attention)."""
    weights = torch.ones(v.shape[0], v.shape[2], dtype=v.dtype, device=v.device) if mask is None else mask.to(v.dtype)
    mean = (v * weights[:, None, :, None]).sum(-2, keepdim=True) / weights.sum(-1)[:, None, None, None]
    return {"zero": 1.0, "uniform": relative_error(mean.expand_as(exact), exact)}


def assert_beats_trivial(
    name: str, out: Tensor, exact: Tensor, v: Tensor, *, mask: Tensor | None = None, factor: float = 0.5
) -> float:
    """Fail unless ``out``'s relative error vs ``exact`` is below ``factor`` times the best trivial predictor's
    (:func:`trivial_errors`); returns that error.

    Raises:
        AssertionError: naming ``name``, the error and the trivial predictors' errors.
    """
    err, trivial = relative_error(out, exact), trivial_errors(exact, v, mask)
    if not err < factor * min(trivial.values()):
        raise AssertionError(f"{name}: relative error {err:.4f} is not below {factor} x the trivial {trivial}")
    return err
