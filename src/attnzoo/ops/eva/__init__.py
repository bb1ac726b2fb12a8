"""EVA and causal EVA: exact local windows plus randomized chunk summaries (efficient-attention)."""

from attnzoo.ops.eva.naive import naive_eva_attention
from attnzoo.ops.eva.sparse import eva_attention

__all__ = ["eva_attention", "naive_eva_attention"]
