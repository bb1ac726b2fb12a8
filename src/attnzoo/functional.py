"""Functional attention cores with ``F.scaled_dot_product_attention``'s signature.

Every core is reachable by its registry name and by ``<name>_attention`` (``attnzoo.functional.local``
is ``local_attention``), and is ``attnzoo.get_spec(name).functional``::

    out = attnzoo.functional.local(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                   scale=None, enable_gqa=False, *, mask=None, causal=None, window_size=64, ...)

``query (..., H, L, E)``, ``key (..., Hk, S, E)``, ``value (..., Hk, S, Ev)`` -> ``(..., H, L, Ev)``. After
SDPA's arguments come the mechanism's keyword options (checked with its options dataclass, so a bad
value gets the module's message), ``mask`` = ``(B, S)`` bool padding mask (True = real token) and
``causal``. ``softmax`` honours every SDPA argument exactly; each other mechanism honours the ones
its math allows (key-padding and causal masks, ``scale`` where it has a softmax scale, ``dropout_p``
where it has attention weights) and refuses the rest with a message naming the mechanism and the
argument: :mod:`attnzoo.ops.common.sdpa`. The ``naive_*`` functions are the independent dense
references on ``(B, H, N, d)`` with the cores' original keyword signature.
"""

from collections.abc import Callable

from torch import Tensor

from attnzoo import mechanisms as _mechanisms  # noqa: F401  (registers every mechanism)
from attnzoo.ops.butterfly import naive_butterfly_attention
from attnzoo.ops.diffuser import naive_diffuser_attention, naive_diffuser_fractional_attention
from attnzoo.ops.dilated import naive_dilated_attention
from attnzoo.ops.eva import naive_causal_eva_attention, naive_eva_attention
from attnzoo.ops.lara import naive_lara_attention
from attnzoo.ops.linear import naive_linear_attention
from attnzoo.ops.linformer import naive_linformer_attention
from attnzoo.ops.local import naive_local_attention
from attnzoo.ops.nystrom import naive_nystrom_attention
from attnzoo.ops.performer import naive_performer_attention
from attnzoo.ops.psf import naive_psf_attention
from attnzoo.ops.ra import naive_ra_attention
from attnzoo.ops.reformer import naive_reformer_attention
from attnzoo.ops.scatterbrain import naive_scatterbrain_attention
from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.registry import get_spec
from attnzoo.sparse import sparse_attention


def _core(name: str) -> Callable[..., Tensor]:
    """The registered functional core of ``name`` (SDPA signature)."""
    core = get_spec(name).functional
    if core is None:
        raise ValueError(f"attention {name!r} has no functional core")
    return core


butterfly = butterfly_attention = _core("butterfly")
psf = psf_attention = _core("psf")
diffuser = diffuser_attention = _core("diffuser")
diffuser_fractional = diffuser_fractional_attention = _core("diffuser_fractional")
reformer = reformer_attention = _core("reformer")
softmax = softmax_attention = _core("softmax")
local = local_attention = _core("local")
dilated = dilated_attention = _core("dilated")
none = none_attention = _core("none")
lara = lara_attention = _core("lara")
eva = eva_attention = _core("eva")
causal_eva = causal_eva_attention = _core("causal_eva")
ra = ra_attention = _core("ra")
scatterbrain = scatterbrain_attention = _core("scatterbrain")
linear = linear_attention = _core("linear")
linformer = linformer_attention = _core("linformer")
nystrom = nystrom_attention = _core("nystrom")
performer = performer_attention = _core("performer")

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
