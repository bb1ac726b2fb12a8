"""RA: randomized attention with one adaptive Gaussian sample per query (efficient-attention)."""

from attnzoo.ops.ra.naive import naive_ra_attention
from attnzoo.ops.ra.randomized import ra_attention, sample_key_index

__all__ = ["naive_ra_attention", "ra_attention", "sample_key_index"]
