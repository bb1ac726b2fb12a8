"""EVA and causal EVA: exact local windows plus randomized chunk summaries (efficient-attention)."""

from attnzoo.ops.eva.causal import causal_eva_attention
from attnzoo.ops.eva.naive import naive_causal_eva_attention, naive_eva_attention
from attnzoo.ops.eva.sparse import eva_attention

__all__ = ["causal_eva_attention", "eva_attention", "naive_causal_eva_attention", "naive_eva_attention"]
