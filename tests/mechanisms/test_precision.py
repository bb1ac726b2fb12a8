"""Every mechanism in the dtypes users train in, against its own fp32 result (docs/precision.md).

The sweep: every registered mechanism x causal / non-causal (where supported) x {bf16 autocast, fp16
autocast, bf16 weights and inputs} x forward and backward, on CPU and (marked ``cuda``) on a GPU. Each
case compares the output, the input gradient and the parameter gradients with the same module in fp32
(same weights, same random draws: every random mechanism is built with ``seed=0`` and runs on a copy),
by relative error ``|a - b| / |b|`` (Frobenius), against ``TOLERANCE[name]`` units of the dtype's unit
roundoff u (bf16 2^-8, fp16 2^-11). Modules run in training mode, so the training draws are compared too.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.functional import nystrom_attention, psf_attention
from attnzoo.ops.common.precision import fp32_core, result_dtype
from attnzoo.ops.psf import naive_psf_attention

TOLERANCE = {
    "butterfly": 3,
    "causal_eva": 5,
    "diffuser": 3,
    # renormfrac normalises rows by sum |x| (official): rounding flips the sign of near-zero entries of
    # L^gamma, a kink of |x| that moves a few rows' gradients (bf16 9 u, fp16 1.6 u)
    "diffuser_fractional": 32,
    "dilated": 4,
    "eva": 4,
    "lara": 6,
    "linear": 3,
    "linformer": 3,
    "local": 4,
    "none": 2,
    "nystrom": 5,
    "performer": 4,
    "psf": 6,
    "ra": 4,
    # LSH buckets are a discrete function of q: bf16 rounding moves a few tokens to another bucket here,
    # which changes their chunks (bf16 32 u, fp16 1.9 u); this bound catches NaN, overflow and dtype
    # faults, not small losses of accuracy
    "reformer": 64,
    "scatterbrain": 8,
    "softmax": 4,
}
"""Relative error allowed for output and gradients, in units of the low-precision dtype's unit roundoff."""

SWEEP_OPTIONS: dict[str, dict] = {
    "butterfly": dict(block_size=4, stage=1),
    "causal_eva": dict(window_size=8, seed=0),
    "diffuser": dict(attention_window=8, num_rand=4, num_glob=2),
    "diffuser_fractional": dict(attention_window=8, num_rand=4, num_glob=2),
    "dilated": dict(segment_lengths=(16, 32), dilation_rates=(1, 2)),
    "eva": dict(window_size=8, num_landmarks=8, seed=0),
    "lara": dict(num_landmarks=8, seed=0),
    "linformer": dict(proj_dim=16, max_length=64),
    "local": dict(window_size=8),
    "nystrom": dict(num_landmarks=8),  # 8 < N: the approximation, not the exact small-N path
    "performer": dict(num_features=32, seed=0),
    "psf": dict(num_factors=6, factor_hidden=16, value_hidden=16),
    "ra": dict(seed=0),
    "reformer": dict(bucket_size=8, num_buckets=(8,)),
    "scatterbrain": dict(window_size=8, approx_attn_dim=32, seed=0),
}
B, N, DIM, HEADS = 2, 64, 32, 2
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
MODES = {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16, "bf16": torch.bfloat16}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
CASES = [
    pytest.param(spec.name, causal, id=f"{spec.name}-{'causal' if causal else 'bidirectional'}")
    for spec in attnzoo.available()
    for causal in (False, True)
    if (spec.capabilities.causal if causal else spec.capabilities.bidirectional)
]


def autocast_supports(device: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device, dtype)`` really runs in ``dtype`` (it warns and disables itself otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device, dtype=dtype):
            return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == dtype


def build(name: str, causal: bool, device: str) -> nn.Module:
    """The mechanism in training mode, its linear layers drawn with std fan_in^-1/2 (scores of order 1)."""
    torch.manual_seed(0)
    module = attnzoo.build(name, DIM, HEADS, causal=causal, **SWEEP_OPTIONS.get(name, {}))
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    return module.to(device).train()


def inputs(device: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, N, DIM), a padding mask (row 1: 24 pads), the output cotangent (B, N, DIM)."""
    gen = torch.Generator().manual_seed(0)
    x, cotangent = torch.randn(2, B, N, DIM, generator=gen)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 40:] = False
    return x.to(device), mask.to(device), cotangent.to(device)


def forward_backward(module: nn.Module, mode: str | None, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output, d output / d x, the parameters' gradients (flat) and the raw output, for one copy of
    ``module`` in ``mode`` (None = fp32); backward outside autocast, as PyTorch recommends."""
    module = copy.deepcopy(module)  # the copy carries the seeded generators: same draws in every mode
    x, mask, cotangent = inputs(device)
    if mode == "bf16":
        module, x = module.to(torch.bfloat16), x.to(torch.bfloat16)
    x.requires_grad_(True)
    dtype = MODES.get(mode or "", torch.float32)
    with torch.autocast(device, dtype=dtype, enabled=mode is not None and mode.endswith("autocast")):
        out = module(x, mask)
    (out.float() * cotangent).sum().backward()
    grads = [torch.zeros(p.shape) if p.grad is None else p.grad.float().cpu() for p in module.parameters()]
    return out.float().cpu(), x.grad.float().cpu(), torch.cat([g.flatten() for g in grads]), out


@functools.cache
def fp32_result(name: str, causal: bool, device: str) -> tuple[Tensor, Tensor, Tensor]:
    return forward_backward(build(name, causal, device), None, device)[:3]


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``|out - ref| / |ref|`` (Frobenius, fp64); inf when ``out`` has a NaN or inf."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def test_every_mechanism_has_a_tolerance():
    assert set(TOLERANCE) == {spec.name for spec in attnzoo.available()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("name", "causal"), CASES)
def test_low_precision_matches_fp32(name: str, causal: bool, mode: str, device: str) -> None:
    dtype = MODES[mode]
    if mode.endswith("autocast") and not autocast_supports(device, dtype):
        pytest.skip(f"{device} autocast has no {dtype}")
    ref = fp32_result(name, causal, device)
    *got, raw = forward_backward(build(name, causal, device), mode, device)
    assert raw.dtype == dtype  # the output projection runs in the autocast / weight dtype
    tol = TOLERANCE[name] * UNIT_ROUNDOFF[dtype]
    errors = {what: relative_error(a, b) for what, a, b in zip(("output", "dx", "dparams"), got, ref, strict=True)}
    assert max(errors.values()) <= tol, f"{name} {mode}: relative errors {errors} > {tol:.2e}"


def test_fp32_core_runs_in_fp32_and_returns_the_autocast_dtype():
    seen = []

    @fp32_core
    def core(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None) -> Tensor:
        product = q @ k.transpose(-1, -2)  # autocast would make this bf16 if it were on
        seen.append((q.dtype, k.dtype, v.dtype, product.dtype, torch.is_autocast_enabled("cpu")))
        return product @ v

    q = k = v = torch.randn(1, 1, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert core(q, k=k, v=v).dtype == torch.bfloat16  # q, k, v by name too
        assert result_dtype(q) == torch.bfloat16 and result_dtype(q.double()) == torch.float64
    assert seen[-1] == (torch.float32, torch.float32, torch.float32, torch.float32, False)
    assert core(q.half(), k.half(), v.half()).dtype == torch.float16 and seen[-1][0] == torch.float32
    assert core(q.double(), k.double(), v.double()).dtype == torch.float64 and seen[-1][3] == torch.float64


def test_a_core_keeps_its_own_error_for_mixed_dtypes():
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(TypeError, match="q, k, v must share one dtype"):
        nystrom_attention(q.half(), q, q, num_landmarks=4)


@pytest.mark.parametrize("n", [256, 1024])
def test_psf_with_raw_qk_stays_in_fp16_range(n):
    """The parameter-free factors are a softmax over each row's links: |out| <= (m + 1) max |v|, and fp16
    stays finite and close to fp32 (raw dot products multiplied out to inf in fp16 from N = 256 on)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, n, 16, generator=gen)
    out = psf_attention(q, k, v)
    m = (n - 1).bit_length()
    assert out.abs().max() <= (m + 1) * v.abs().max()
    half = psf_attention(q.half(), k.half(), v.half())
    assert half.dtype == torch.float16
    assert relative_error(half.float(), out) <= 4 * UNIT_ROUNDOFF[torch.float16]


def test_psf_raw_qk_factors_equal_the_dense_reference():
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 21, 8, generator=gen, dtype=torch.float64).requires_grad_()
    mask = torch.arange(21)[None] < torch.tensor([[21], [15]])
    out = psf_attention(q, k, v, mask=mask, num_factors=3)
    ref = naive_psf_attention(q, k, v, mask=mask, num_factors=3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(out.sum(), q), torch.autograd.grad(ref.sum(), q), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


if __name__ == "__main__":  # the measured errors behind TOLERANCE, in units of u (docs/precision.md)
    print("| mechanism | causal | " + " | ".join(MODES) + " | tolerance |")
    print("|---|---|" + "---|" * len(MODES) + "---|")
    for case in CASES:
        name, causal = case.values
        ref = fp32_result(name, causal, "cpu")
        cells = []
        for mode, dtype in MODES.items():
            got = forward_backward(build(name, causal, "cpu"), mode, "cpu")[:3]
            worst = max(relative_error(a, b) for a, b in zip(got, ref, strict=True))
            cells.append(f"{worst / UNIT_ROUNDOFF[dtype]:.1f}")
        print(f"| `{name}` | {'yes' if causal else 'no'} | " + " | ".join(cells) + f" | {TOLERANCE[name]} |")
