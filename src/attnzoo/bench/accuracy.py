"""Approximation error of a mechanism against exact softmax attention computed in float64.

Three input distributions for ``q, k`` (``v`` is standard normal throughout), chosen by the spread of
the logits ``q . k / sqrt(d)`` they give:

- ``near-uniform``: entries ``N(0, 0.1^2)``, logits with standard deviation 0.01: attention is almost
  an average, where low-rank and kernel approximations are at their best;
- ``unit-variance``: entries ``N(0, 1)``, logits with standard deviation 1;
- ``peaky-clustered``: queries and keys are noisy copies (noise 0.1) of 8 random centres with entries
  ``N(0, 1.5^2)``: logits of a query with keys of its own cluster are about ``1.5^2 sqrt(d)`` = 18 (d = 64),
  with the other clusters' a few units around 0, so each row puts nearly all its weight on its own
  cluster's keys (row entropy about ``log(N / 8)``; hashing and clustering mechanisms are built for this,
  kernel features struggle).

Two numbers per (mechanism, distribution, N), both relative Frobenius errors ``|out - ref| / |ref|`` over
all batches and heads: ``err_softmax`` against full softmax in float64 (the approximation, or for a
pattern-exact mechanism such as ``local`` the cost of its pattern) and ``err_fp64`` against the same
module (same parameters, same random seed) run in float64: float32 rounding, a sanity check that is
small for every mechanism.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

import attnzoo

__all__ = ["DISTRIBUTIONS", "error_record", "exact_softmax", "make_inputs", "relative_error"]

DISTRIBUTIONS = ("near-uniform", "unit-variance", "peaky-clustered")

_QUERY_CHUNK = 128  # float64 score chunks of (B, H, 128, N): 16 MiB at H=4, N=4096


def make_inputs(dist: str, shape: tuple[int, int, int, int], seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` of ``shape = (B, H, N, d)`` in float64 drawn from distribution ``dist``.

    Raises:
        ValueError: unknown distribution.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    if dist == "near-uniform":
        q, k = (0.1 * torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    elif dist == "unit-variance":
        q, k = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    elif dist == "peaky-clustered":
        b, h, n, d = shape
        centres = 1.5 * torch.randn(b, h, 8, d, generator=gen, dtype=torch.float64)

        def draw() -> Tensor:
            which = torch.randint(0, 8, (b, h, n), generator=gen)
            picked = torch.gather(centres, 2, which[..., None].expand(b, h, n, d))
            return picked + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)

        q, k = draw(), draw()
    else:
        raise ValueError(f"unknown input distribution {dist!r}; choose from {', '.join(DISTRIBUTIONS)}")
    return q, k, v


def exact_softmax(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
    """Dense softmax attention ``softmax(q k^T / sqrt(d)) v`` on ``(B, H, N, d)``, in query chunks of 128 rows
    (no N x N tensor), in the inputs' dtype."""
    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    outs = []
    for start in range(0, n, _QUERY_CHUNK):
        scores = q[..., start : start + _QUERY_CHUNK, :] @ k.transpose(-1, -2) * scale
        if causal:
            rows = torch.arange(start, min(start + _QUERY_CHUNK, n))[:, None]
            scores = scores.masked_fill(torch.arange(n)[None, :] > rows, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(outs, dim=-2)


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``|out - ref|_F / |ref|_F`` computed in float64."""
    diff = out.double() - ref.double()
    return float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(ref.double()))


def error_record(
    mechanism: str, seq_len: int, dist: str, options: dict[str, Any], *, heads: int = 4, head_dim: int = 64
) -> dict[str, Any]:
    """Errors of ``mechanism`` (float32, CPU, non-causal, no mask) on one distribution at length ``seq_len``.

    Returns:
        A record: ``kind="error"``, mechanism, seq_len, heads, head_dim, dist, options, ``exact`` (the
        mechanism's capability flag), ``err_softmax``, ``err_fp64`` (see the module docstring).
    """
    from attnzoo.bench.run import core_widths

    q, k, v = make_inputs(dist, (1, heads, seq_len, head_dim))
    module = attnzoo.build(mechanism, heads * head_dim, heads, **options).eval()
    widths = core_widths(module, heads * head_dim)
    if widths != (head_dim,) * 3:
        raise NotImplementedError(
            f"{mechanism}'s core reads q, k, v of widths {widths}, not queries and keys of width {head_dim}: "
            "no softmax to compare with"
        )
    module64 = copy.deepcopy(module).double()
    with torch.no_grad():
        torch.manual_seed(0)
        out = module.float().attend(q.float(), k.float(), v.float(), None)
        torch.manual_seed(0)
        out64 = module64.attend(q, k, v, None)
    ref = exact_softmax(q, k, v)
    return {
        "kind": "error",
        "mechanism": mechanism,
        "seq_len": seq_len,
        "heads": heads,
        "head_dim": head_dim,
        "dist": dist,
        "options": {key: list(val) if isinstance(val, tuple) else val for key, val in options.items()},
        "exact": attnzoo.get_spec(mechanism).capabilities.exact,
        "err_softmax": relative_error(out, ref),
        "err_fp64": relative_error(out, out64),
        "status": "ok",
    }
