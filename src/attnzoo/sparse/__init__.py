"""Block-sparse attention: patterns described once (:mod:`.patterns`), run by one engine (:mod:`.engine`)."""

from attnzoo.sparse.engine import EXECUTOR_NAMES, merge_partials, pick_executor, sparse_attention
from attnzoo.sparse.layout import BlockLayout, MaskMod, SparsePattern
from attnzoo.sparse.patterns import blockwise_window, dilated_segments, sliding_window, window_2d

__all__ = [
    "EXECUTOR_NAMES",
    "BlockLayout",
    "MaskMod",
    "SparsePattern",
    "blockwise_window",
    "dilated_segments",
    "merge_partials",
    "pick_executor",
    "sliding_window",
    "sparse_attention",
    "window_2d",
]
