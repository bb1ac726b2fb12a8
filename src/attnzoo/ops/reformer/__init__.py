"""Reformer LSH attention: shared QK, angular hashing, bucket sort, chunked attention."""

from attnzoo.ops.reformer.hashing import auto_num_buckets, hash_buckets, normalise_keys
from attnzoo.ops.reformer.lsh import draw_rotations, reformer_attention
from attnzoo.ops.reformer.naive import naive_reformer_attention

__all__ = [
    "auto_num_buckets",
    "draw_rotations",
    "hash_buckets",
    "naive_reformer_attention",
    "normalise_keys",
    "reformer_attention",
]
