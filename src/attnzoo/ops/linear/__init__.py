"""``linear``: elu+1 kernelized attention, and the chunked feature-map engine shared with ``performer``."""

from attnzoo.ops.linear.kernel import feature_attention
from attnzoo.ops.linear.linear import linear_attention
from attnzoo.ops.linear.naive import naive_linear_attention

__all__ = ["feature_attention", "linear_attention", "naive_linear_attention"]
