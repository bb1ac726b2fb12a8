"""Functional attention cores on ``(B, H, N, d)`` tensors, drop-in for ``F.scaled_dot_product_attention``.

Each takes ``q, k, v`` and keyword options (``mask`` = ``(B, S)`` bool padding mask, True = real
token; ``causal``), and returns ``(B, H, N, d)``. ``attnzoo.get_spec(name).functional`` gives the
same functions by registry name.
"""

from attnzoo.ops.dilated import dilated_attention, naive_dilated_attention
from attnzoo.ops.local import local_attention, naive_local_attention
from attnzoo.ops.none import none_attention
from attnzoo.ops.softmax import naive_softmax_attention, softmax_attention
from attnzoo.sparse import sparse_attention

__all__ = [
    "dilated_attention",
    "local_attention",
    "naive_dilated_attention",
    "naive_local_attention",
    "naive_softmax_attention",
    "none_attention",
    "softmax_attention",
    "sparse_attention",
]
