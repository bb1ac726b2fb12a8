"""Shared shape checks, mask conversions and padding helpers (the only copies in attnzoo)."""

from attnzoo.ops.common.checks import check_padding_mask, check_qkv
from attnzoo.ops.common.masks import (
    key_mask_bias,
    padding_attn_mask,
    rows_with_keys,
    zero_masked_rows,
    zero_padded_tokens,
)
from attnzoo.ops.common.padding import pad_to_multiple

__all__ = [
    "check_padding_mask",
    "check_qkv",
    "key_mask_bias",
    "pad_to_multiple",
    "padding_attn_mask",
    "rows_with_keys",
    "zero_masked_rows",
    "zero_padded_tokens",
]
