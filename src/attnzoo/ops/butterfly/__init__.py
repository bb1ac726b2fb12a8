"""Butterfly attention (Dimension Mixer): softmax inside groups of b tokens s apart."""

from attnzoo.ops.butterfly.naive import naive_butterfly_attention
from attnzoo.ops.butterfly.sparse import butterfly_attention

__all__ = ["butterfly_attention", "naive_butterfly_attention"]
