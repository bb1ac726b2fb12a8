"""Local attention: sliding or blockwise windows, 1D or over a 2D token grid, optional learned RPE."""

from attnzoo.ops.local.flops import local_entries, local_flops
from attnzoo.ops.local.naive import naive_local_attention
from attnzoo.ops.local.sparse import LocalWindow, local_attention

__all__ = ["LocalWindow", "local_attention", "local_entries", "local_flops", "naive_local_attention"]
