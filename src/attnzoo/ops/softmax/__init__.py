"""Exact softmax attention (SDPA) and its dense reference."""

from attnzoo.ops.softmax.naive import naive_softmax_attention
from attnzoo.ops.softmax.sdpa import softmax_attention

__all__ = ["naive_softmax_attention", "softmax_attention"]
