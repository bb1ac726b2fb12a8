"""``linformer``: low-rank attention through learned sequence projections E, F."""

from attnzoo.ops.linformer.naive import naive_linformer_attention
from attnzoo.ops.linformer.projection import linformer_attention

__all__ = ["linformer_attention", "naive_linformer_attention"]
