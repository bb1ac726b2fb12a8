"""Which residue of each dilated segment a head keeps (LongNet's per-head offsets)."""

from __future__ import annotations

import math

from attnzoo.options import check_choice

__all__ = ["OFFSET_RULES", "check_branches", "head_offsets"]

OFFSET_RULES = ("torchscale", "paper")


def head_offsets(num_heads: int, dilation: int, rule: str = "torchscale") -> tuple[int, ...]:
    """Offset in ``[0, r)`` of every head for dilation ``r``.

    * ``"torchscale"`` (official code): contiguous head blocks, head j gets ``j // (H' / r)`` with
      ``H' = ceil(H / r) * r`` (H=4, r=2: heads 0, 1 take even rows, heads 2, 3 odd rows).
    * ``"paper"``: ``j mod r``.
    """
    check_choice("offset_rule", rule, OFFSET_RULES)
    if rule == "paper":
        return tuple(j % dilation for j in range(num_heads))
    per_offset = math.ceil(num_heads / dilation)
    return tuple(j // per_offset for j in range(num_heads))


def check_branches(segment_lengths: tuple[int, ...], dilation_rates: tuple[int, ...]) -> None:
    """Validate the (w_i, r_i) lists.

    Raises:
        ValueError: empty or different-length lists, non-positive entries.
    """
    if not segment_lengths or len(segment_lengths) != len(dilation_rates):
        raise ValueError(
            "segment_lengths and dilation_rates must be non-empty and of equal length, got "
            f"{segment_lengths!r} and {dilation_rates!r}"
        )
    for name, values in (("segment_lengths", segment_lengths), ("dilation_rates", dilation_rates)):
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in values):
            raise ValueError(f"{name} must hold positive ints, got {values!r}")
