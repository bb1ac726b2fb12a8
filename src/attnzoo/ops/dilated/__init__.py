"""LongNet dilated attention: a mixture of (segment length, dilation rate) branches."""

from attnzoo.ops.dilated.flops import dilated_entries, dilated_flops
from attnzoo.ops.dilated.naive import naive_dilated_attention
from attnzoo.ops.dilated.offsets import head_offsets
from attnzoo.ops.dilated.sparse import dilated_attention

__all__ = [
    "dilated_attention",
    "dilated_entries",
    "dilated_flops",
    "head_offsets",
    "naive_dilated_attention",
]
