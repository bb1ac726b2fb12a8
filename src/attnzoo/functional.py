"""Functional attention cores on ``(B, H, N, d)`` tensors, drop-in for ``F.scaled_dot_product_attention``.

Each takes ``q, k, v`` and keyword options (``mask`` = ``(B, S)`` bool padding mask, True = real
token; ``causal``), and returns ``(B, H, N, d)``. Every core is also reachable by its registry name
(``attnzoo.functional.local`` is ``local_attention``), as is ``attnzoo.get_spec(name).functional``.
"""

from attnzoo.ops.butterfly import butterfly_attention, naive_butterfly_attention
from attnzoo.ops.diffuser import (
    diffuser_attention,
    diffuser_fractional_attention,
    naive_diffuser_attention,
    naive_diffuser_fractional_attention,
)
from attnzoo.ops.dilated import dilated_attention, naive_dilated_attention
from attnzoo.ops.eva import causal_eva_attention, eva_attention, naive_causal_eva_attention, naive_eva_attention
from attnzoo.ops.lara import lara_attention, naive_lara_attention
from attnzoo.ops.linear import linear_attention, naive_linear_attention
from attnzoo.ops.linformer import linformer_attention, naive_linformer_attention
from attnzoo.ops.local import local_attention, naive_local_attention
from attnzoo.ops.none import none_attention
from attnzoo.ops.nystrom import naive_nystrom_attention, nystrom_attention
from attnzoo.ops.performer import naive_performer_attention, performer_attention
from attnzoo.ops.psf import naive_psf_attention, psf_attention
from attnzoo.ops.ra import naive_ra_attention, ra_attention
from attnzoo.ops.reformer import naive_reformer_attention, reformer_attention
from attnzoo.ops.scatterbrain import naive_scatterbrain_attention, scatterbrain_attention
from attnzoo.ops.softmax import naive_softmax_attention, softmax_attention
from attnzoo.sparse import sparse_attention

butterfly = butterfly_attention
psf = psf_attention
diffuser = diffuser_attention
diffuser_fractional = diffuser_fractional_attention
reformer = reformer_attention
softmax = softmax_attention
local = local_attention
dilated = dilated_attention
none = none_attention
lara = lara_attention
eva = eva_attention
causal_eva = causal_eva_attention
ra = ra_attention
scatterbrain = scatterbrain_attention
linear = linear_attention
linformer = linformer_attention
nystrom = nystrom_attention
performer = performer_attention

__all__ = [
    "butterfly",
    "butterfly_attention",
    "causal_eva",
    "causal_eva_attention",
    "diffuser",
    "diffuser_attention",
    "diffuser_fractional",
    "diffuser_fractional_attention",
    "dilated",
    "dilated_attention",
    "eva",
    "eva_attention",
    "lara",
    "lara_attention",
    "linear",
    "linear_attention",
    "linformer",
    "linformer_attention",
    "local",
    "local_attention",
    "naive_butterfly_attention",
    "naive_causal_eva_attention",
    "naive_diffuser_attention",
    "naive_diffuser_fractional_attention",
    "naive_dilated_attention",
    "naive_eva_attention",
    "naive_lara_attention",
    "naive_linear_attention",
    "naive_linformer_attention",
    "naive_local_attention",
    "naive_nystrom_attention",
    "naive_performer_attention",
    "naive_psf_attention",
    "naive_ra_attention",
    "naive_reformer_attention",
    "naive_scatterbrain_attention",
    "naive_softmax_attention",
    "none",
    "none_attention",
    "nystrom",
    "nystrom_attention",
    "performer",
    "performer_attention",
    "psf",
    "psf_attention",
    "ra",
    "ra_attention",
    "reformer",
    "reformer_attention",
    "scatterbrain",
    "scatterbrain_attention",
    "softmax",
    "softmax_attention",
    "sparse_attention",
]
