"""Attention modules, one file per mechanism; importing this package registers all of them.

The list is explicit (as in timm's ``models/__init__.py``) so the registry's contents are predictable.
"""

from attnzoo.mechanisms import (  # noqa: F401  (registration side effects)
    butterfly,
    causal_eva,
    diffuser,
    diffuser_fractional,
    dilated,
    eva,
    lara,
    linear,
    linformer,
    local,
    none,
    nystrom,
    performer,
    psf,
    ra,
    reformer,
    scatterbrain,
    softmax,
)
from attnzoo.mechanisms.base import AttentionBase

__all__ = ["AttentionBase"]
