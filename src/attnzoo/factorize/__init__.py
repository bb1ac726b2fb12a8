"""PSF's non-parametric experiment: approximate a square matrix by a product of chord-sparse factors.

``chord_factorize(A)`` fits ``A ~ W_1 ... W_M`` (``M = ceil(log2 N)``, every factor on the chord mask of
``chord_mask(N)``) as the official ``sf_appr_test.m`` does and reports the error beside the truncated SVD
of the same budget (``truncated_svd_error(A, ceil(M^2 / 2))``). ``attnzoo factorize`` runs it on files
and on built-in matrices (:mod:`attnzoo.factorize.matrices`); see ``docs/factorize.md``.
"""

from attnzoo.factorize.chord import chord_index, chord_mask, matlab_randperm
from attnzoo.factorize.objective import apply_factor, apply_factor_transposed, chord_objective, factor_product
from attnzoo.factorize.optimize import FactorizeResult, chord_factorize, official_init, svd_rank, truncated_svd_error

__all__ = [
    "FactorizeResult",
    "apply_factor",
    "apply_factor_transposed",
    "chord_factorize",
    "chord_index",
    "chord_mask",
    "chord_objective",
    "factor_product",
    "matlab_randperm",
    "official_init",
    "svd_rank",
    "truncated_svd_error",
]
