"""``chord_factorize``: fit ``A ~ W_1 ... W_M`` with chord-sparse factors, as ``sf_appr_test.m`` does.

The official experiment (PSF-Attn, ``non-parametric/sf_appr_test.m``):

- ``M = ceil(log2 N)`` factors on one chord mask (:func:`attnzoo.factorize.chord.chord_mask`);
- initialisation: each ``W_m`` is the row-normalised mask plus, on the mask, a uniform noise matrix
  ``rand(N, N)`` whose full rows are scaled to sum ``1e-2``, drawn after ``rng(1, 'twister')`` (MT19937
  seed 1, numpy's ``RandomState(1)``, column-major fill, one matrix per factor in order);
- ``fminunc`` quasi-Newton on ``0.5 ||A - W_1...W_M||_F^2`` over the nonzeros, ``MaxIter 1e5``,
  ``TolX 1e-10``, the default optimality tolerance ``1e-6``. Both tolerances are relative for fminunc's
  quasi-Newton algorithm (MATLAB "Tolerance Details"): stop when ``||x_k - x_{k-1}||_2 < TolX (1 + ||x_{k-1}||_2)``
  or ``||g_k||_inf < TolFun max(1, ||g_0||_inf)``;
- baseline: truncated SVD of rank ``r = ceil(M^2 / 2)`` (``svds``), error ``||A - A_r||_F``.

Here the optimiser is L-BFGS with a strong-Wolfe line search (``torch.optim.LBFGS``, one iteration per
``step``): fminunc's dense BFGS keeps a ``P x P`` matrix over ``P = M N K`` unknowns, 10^10 entries at
``N = 1024``. The stopping rule above is checked after every iteration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from attnzoo.factorize.chord import chord_index, chord_mask
from attnzoo.factorize.objective import chord_objective, factor_product

__all__ = ["FactorizeResult", "chord_factorize", "official_init", "svd_rank", "truncated_svd_error"]

OFFICIAL_MAX_ITER = 100_000
OFFICIAL_TOL_X = 1e-10
OFFICIAL_TOL_FUN = 1e-6  # optimset's default TolFun for fminunc (not set by sf_appr_test.m)
_INIT_SEED = 1  # rng(1, 'twister')
_INIT_NOISE = 1e-2
_LINE_SEARCH_EVALS = 25  # torch's strong-Wolfe default; LBFGS(max_iter=1) would otherwise allow it max_eval - 1 = 0


@dataclasses.dataclass
class FactorizeResult:
    """What :func:`chord_factorize` found.

    Attributes:
        factors: ``M`` sparse COO ``(N, N)`` float64 tensors, ``A ~ factors[0] @ ... @ factors[M-1]``.
        error: ``||A - W_1...W_M||_F``.
        svd_error: ``||A - A_r||_F`` of the rank-``r`` truncated SVD.
        rank: ``r = ceil(M^2 / 2)``.
        norm: ``||A||_F``.
        iterations: L-BFGS iterations run.
        history: objective ``0.5 ||A - W_1...W_M||_F^2`` at the start and after every iteration.
        stopped: ``"step_tolerance"``, ``"optimality_tolerance"`` (the official rules), ``"max_iter"``
            (the iteration cap) or ``"non_finite"`` (the objective overflowed; the last finite point is kept).
        seconds: wall time of the optimisation.
        values: ``(M, N, K)`` the factors in index layout; ``index`` and ``valid``: ``(N, K)``.
    """

    factors: list[torch.Tensor]
    error: float
    svd_error: float
    rank: int
    norm: float
    iterations: int
    history: list[float]
    stopped: str
    seconds: float
    values: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    @property
    def nnz(self) -> int:
        """Nonzeros of all factors together."""
        return int(self.valid.sum()) * self.values.shape[0]

    def approximation(self) -> torch.Tensor:
        """The dense product ``W_1 ... W_M``, ``(N, N)``."""
        return factor_product(self.values, self.index)


def svd_rank(n: int) -> int:
    """The official TSVD budget for an ``n x n`` matrix: ``ceil(M^2 / 2)`` with ``M = ceil(log2 n)``."""
    m = math.ceil(math.log2(n))
    return math.ceil(m * m / 2)


def truncated_svd_error(a: torch.Tensor, rank: int) -> float:
    """``||A - A_r||_F`` for the best rank-``rank`` approximation of ``a`` (2-D): the root of the
    squared singular values past the first ``rank`` (0 when ``rank >= min(a.shape)``).

    Raises:
        ValueError: ``a`` not 2-D or ``rank`` negative.
    """
    if a.dim() != 2:
        raise ValueError(f"truncated_svd_error: expected a 2-D matrix, got shape {tuple(a.shape)}")
    if rank < 0:
        raise ValueError(f"truncated_svd_error: rank must be >= 0, got {rank}")
    singular = torch.linalg.svdvals(a.to(torch.float64))
    return float(singular[rank:].square().sum().sqrt())


def official_init(index: torch.Tensor, valid: torch.Tensor, num_factors: int) -> torch.Tensor:
    """The official starting factors in index layout: ``(num_factors, N, K)`` float64.

    ``W_m = mask / rowsum(mask) + noise_m`` on the mask, ``noise_m = rand(N, N)`` with each full row
    scaled to sum ``1e-2``; the draws follow ``rng(1, 'twister')`` and MATLAB's column-major fill.
    """
    n = index.shape[0]
    rng = np.random.RandomState(_INIT_SEED)
    base = valid.to(torch.float64) / valid.sum(1, keepdim=True)
    out = torch.empty(num_factors, *index.shape, dtype=torch.float64)
    for m in range(num_factors):
        noise = torch.from_numpy(rng.random_sample(n * n).reshape(n, n, order="F"))
        noise = noise / noise.sum(1, keepdim=True) * _INIT_NOISE
        out[m] = (base + noise.gather(1, index)) * valid
    return out


class _Evaluations:
    """The objective at the last few points, so that L-BFGS's re-evaluation of an accepted point is free."""

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], keep: int = 8) -> None:
        self.fn, self.keep = fn, keep
        self.points: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for point, loss, grad in self.points:
            if torch.equal(point, x):
                return loss, grad
        loss, grad = self.fn(x)
        self.points = [*self.points[-(self.keep - 1) :], (x.detach().clone(), loss, grad)]
        return loss, grad


def chord_factorize(
    a: torch.Tensor,
    *,
    base: int = 2,
    symmetric: bool = False,
    self_loops: bool = True,
    random_order: bool = False,
    max_iter: int = OFFICIAL_MAX_ITER,
    tol: float = OFFICIAL_TOL_X,
    tol_fun: float = OFFICIAL_TOL_FUN,
    history_size: int = 20,
    device: str | torch.device | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> FactorizeResult:
    """Approximate a square matrix by ``M = ceil(log2 N)`` chord-sparse factors (PSF's non-parametric test).

    Args:
        a: ``A``, ``(N, N)`` finite, ``N >= 2``; used in float64.
        base, symmetric, self_loops, random_order: the chord mask (:func:`chord_mask`); the official
            experiment uses the defaults.
        max_iter: iteration cap (official ``MaxIter``: 100000).
        tol: step tolerance (official ``TolX``: 1e-10), relative: ``||dx|| < tol (1 + ||x||)``.
        tol_fun: optimality tolerance (fminunc's default 1e-6), relative to the first gradient's max norm.
        history_size: L-BFGS memory (pairs of steps and gradient changes).
        device: where to run (default: ``a``'s device).
        callback: called after each iteration with ``(iteration, objective)``.

    Returns:
        A :class:`FactorizeResult` (factors on ``device``).

    Raises:
        ValueError: ``a`` not square 2-D with ``N >= 2``, not finite, or a bad option value.
    """
    if a.dim() != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"chord_factorize: A must be a square (N, N) matrix with N >= 2, got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("chord_factorize: A has NaN or infinite entries")
    if max_iter < 0 or tol < 0 or tol_fun < 0 or history_size < 1:
        raise ValueError(
            f"chord_factorize: max_iter, tol and tol_fun must be >= 0 and history_size >= 1, got max_iter={max_iter}, "
            f"tol={tol}, tol_fun={tol_fun}, history_size={history_size}"
        )
    device = torch.device(device) if device is not None else a.device
    target = a.to(device=device, dtype=torch.float64)
    n = target.shape[0]
    index, valid = chord_index(chord_mask(n, base, symmetric, self_loops, random_order))
    num_factors = math.ceil(math.log2(n))
    rank = svd_rank(n)
    x = torch.nn.Parameter(official_init(index, valid, num_factors).to(device))
    index, valid = index.to(device), valid.to(device)
    evaluate = _Evaluations(lambda v: chord_objective(v, index, valid, target))

    def closure() -> torch.Tensor:
        loss, grad = evaluate(x.detach())
        x.grad = grad.clone()
        return loss

    optimizer = torch.optim.LBFGS(
        [x], lr=1, max_iter=1, max_eval=1 + _LINE_SEARCH_EVALS, tolerance_grad=0.0, tolerance_change=0.0,
        history_size=history_size, line_search_fn="strong_wolfe",
    )  # fmt: skip
    start = time.perf_counter()
    loss, grad = evaluate(x.detach())
    history = [float(loss)]
    grad_scale = max(1.0, float(grad.abs().max()))
    iterations = 0
    while True:
        if float(grad.abs().max()) < tol_fun * grad_scale:
            stopped = "optimality_tolerance"
            break
        if iterations >= max_iter:
            stopped = "max_iter"
            break
        previous = x.detach().clone()
        optimizer.step(closure)
        loss, grad = evaluate(x.detach())
        if not math.isfinite(float(loss)):
            with torch.no_grad():
                x.copy_(previous)
            stopped = "non_finite"
            break
        iterations += 1
        history.append(float(loss))
        if callback is not None:
            callback(iterations, float(loss))
        if float((x.detach() - previous).norm()) < tol * (1 + float(previous.norm())):
            stopped = "step_tolerance"
            break
    seconds = time.perf_counter() - start
    values = x.detach()
    rows = torch.arange(n, device=device)[:, None].expand_as(index)
    factors = [
        torch.sparse_coo_tensor(
            torch.stack([rows[valid], index[valid]]), v[valid], (n, n), check_invariants=False, is_coalesced=True
        )
        for v in values
    ]
    error = float((target - factor_product(values, index)).norm())
    return FactorizeResult(
        factors=factors, error=error, svd_error=truncated_svd_error(target, rank), rank=rank,
        norm=float(target.norm()), iterations=iterations, history=history, stopped=stopped, seconds=seconds,
        values=values, index=index, valid=valid,
    )  # fmt: skip
