"""``performer``: FAVOR+ / RFA random-feature attention; the feature map is reusable (ScatterBrain)."""

from attnzoo.ops.performer.favor import performer_attention
from attnzoo.ops.performer.features import draw_projection, favor_log_features
from attnzoo.ops.performer.naive import naive_performer_attention

__all__ = ["draw_projection", "favor_log_features", "naive_performer_attention", "performer_attention"]
