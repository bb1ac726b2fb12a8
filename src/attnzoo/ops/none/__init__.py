"""The no-attention baseline (``none``) and its dense reference."""

from attnzoo.ops.none.identity import none_attention
from attnzoo.ops.none.naive import naive_none_attention

__all__ = ["naive_none_attention", "none_attention"]
