"""ScatterBrain: exact local windows plus Performer (FAVOR+) features for the remaining keys."""

from attnzoo.ops.scatterbrain.naive import naive_scatterbrain_attention
from attnzoo.ops.scatterbrain.sparse_lowrank import scatterbrain_attention

__all__ = ["naive_scatterbrain_attention", "scatterbrain_attention"]
