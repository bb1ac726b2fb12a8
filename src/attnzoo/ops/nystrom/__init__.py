"""``nystrom``: Nystromformer attention (landmarks, iterative pseudo-inverse, optional conv skip)."""

from attnzoo.ops.nystrom.landmarks import iterative_pinv, segment_ids, segment_means
from attnzoo.ops.nystrom.naive import naive_nystrom_attention
from attnzoo.ops.nystrom.nystrom import nystrom_attention

__all__ = ["iterative_pinv", "naive_nystrom_attention", "nystrom_attention", "segment_ids", "segment_means"]
