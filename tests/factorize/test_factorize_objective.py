"""The factorisation objective, its analytic gradient (against autograd), the official initialisation,
truncated SVD and the optimiser's stopping rules (``sf_appr_test.m``, SparseFactorization d8ade2e)."""

import math

import numpy as np
import pytest
import torch

from attnzoo.factorize import (
    apply_factor,
    apply_factor_transposed,
    chord_factorize,
    chord_index,
    chord_mask,
    chord_objective,
    factor_product,
    official_init,
    svd_rank,
    truncated_svd_error,
)


def dense_factors(values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
    n = index.shape[0]
    return [torch.zeros(n, n, dtype=values.dtype).scatter_add(1, index, v * valid) for v in values]


@pytest.mark.parametrize(
    ("n", "options"),
    [(13, {}), (16, {"symmetric": True}), (16, {"random_order": True}), (20, {"base": 3, "self_loops": False})],
)
def test_gradient_equals_autograd_fp64(n, options):
    index, valid = chord_index(chord_mask(n, **options))
    g = torch.Generator().manual_seed(n)
    values = (0.5 * torch.randn(4, *index.shape, generator=g, dtype=torch.float64)) * valid
    target = torch.randn(n, n, generator=g, dtype=torch.float64)
    loss, grad = chord_objective(values, index, valid, target)

    leaf = values.clone().requires_grad_()
    product = torch.linalg.multi_dot(dense_factors(leaf, index, valid))
    reference = 0.5 * (target - product).square().sum()
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, leaf.grad, rtol=0, atol=1e-10)
    assert float(grad.abs().max()) > 1e-2  # not a trivially zero gradient
    assert not bool(grad[:, ~valid].any())  # padding slots get no gradient


def test_apply_factor_and_product_equal_dense_matmul():
    index, valid = chord_index(chord_mask(12, symmetric=True, random_order=True))
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, *index.shape, generator=g, dtype=torch.float64) * valid
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    dense = dense_factors(values, index, valid)
    torch.testing.assert_close(apply_factor(values[0], index, x), dense[0] @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(apply_factor_transposed(values[1], index, x), dense[1].T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(factor_product(values, index), torch.linalg.multi_dot(dense), rtol=0, atol=1e-12)


def test_official_init_draw_order():
    # N = 4: rows {i, i+1, i+2} (3 nonzeros); rng(1, 'twister') = RandomState(1); rand(4, 4) fills columns first
    index, valid = chord_index(chord_mask(4))
    init = official_init(index, valid, 2)
    draws = np.random.RandomState(1).random_sample(32)
    first, second = draws[:16].reshape(4, 4, order="F"), draws[16:].reshape(4, 4, order="F")
    assert draws[1] == pytest.approx(0.720324493)  # MATLAB: rng(1); rand(1, 2) = 0.4170 0.7203
    # W_1[1, 1]: row 1 is {1, 2, 3}; noise u[1, 1] = draws[1 + 4 * 1], row sum over all 4 columns
    expected = 1 / 3 + 1e-2 * draws[5] / first[1].sum()
    assert float(init[0][1][index[1] == 1]) == pytest.approx(expected, abs=1e-15)
    dense = dense_factors(init, index, valid)
    mask = chord_mask(4).double()
    torch.testing.assert_close(
        dense[1], (mask / 3 + 1e-2 * torch.from_numpy(second / second.sum(1, keepdims=True))) * mask
    )


def test_truncated_svd_error():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(9, 9, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(a)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert truncated_svd_error(a, 4) == pytest.approx(float((a - best).norm()), rel=1e-12)
    assert truncated_svd_error(a, 9) == 0.0
    assert svd_rank(1024) == 50 and svd_rank(100) == 25 and svd_rank(8) == 5  # ceil(ceil(log2 N)^2 / 2)
    with pytest.raises(ValueError, match="rank must be >= 0, got -1"):
        truncated_svd_error(a, -1)


def exact_chord_product(n: int, seed: int = 0) -> torch.Tensor:
    index, valid = chord_index(chord_mask(n))
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(math.ceil(math.log2(n)), *index.shape, generator=g, dtype=torch.float64) * valid
    return factor_product(values, index)


def test_factorization_reaches_the_stopping_rule_and_beats_tsvd():
    a = exact_chord_product(4)
    seen = []
    result = chord_factorize(a, max_iter=3000, callback=lambda it, obj: seen.append((it, obj)))
    assert result.stopped in ("step_tolerance", "optimality_tolerance")
    assert 0 < result.iterations < 3000
    assert [it for it, _ in seen] == list(range(1, result.iterations + 1))
    assert len(result.history) == result.iterations + 1
    assert result.history[-1] < 1e-3 * result.history[0]
    assert result.error == pytest.approx(math.sqrt(2 * result.history[-1]), rel=1e-9)
    assert result.rank == 2 and result.svd_error > 0.05 * result.norm
    assert result.error < 1e-3 * result.svd_error  # A is a chord product: SF fits it, rank-2 TSVD cannot
    # the sparse factors multiply to the approximation and keep the chord mask
    assert len(result.factors) == 2 and all(f.is_sparse for f in result.factors)
    product = result.factors[0].to_dense() @ result.factors[1].to_dense()
    torch.testing.assert_close(product, result.approximation(), rtol=0, atol=1e-12)
    assert all(torch.equal(f.to_dense() != 0, chord_mask(4)) for f in result.factors)
    assert result.nnz == 2 * 12


def test_iteration_cap_and_zero_iterations():
    a = exact_chord_product(8, seed=1) + 0.1
    capped = chord_factorize(a, max_iter=3)
    assert (capped.stopped, capped.iterations, len(capped.history)) == ("max_iter", 3, 4)
    assert capped.history[-1] < capped.history[0]
    untouched = chord_factorize(a, max_iter=0)
    assert (untouched.stopped, untouched.iterations) == ("max_iter", 0)
    initial = factor_product(official_init(*chord_index(chord_mask(8)), 3), chord_index(chord_mask(8))[0])
    assert untouched.error == pytest.approx(float((a - initial).norm()), rel=1e-12)


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match=r"square \(N, N\) matrix with N >= 2, got shape \(3, 4\)"):
        chord_factorize(torch.ones(3, 4))
    bad = torch.ones(4, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        chord_factorize(bad)
    with pytest.raises(ValueError, match="max_iter=-1"):
        chord_factorize(torch.ones(4, 4), max_iter=-1)
