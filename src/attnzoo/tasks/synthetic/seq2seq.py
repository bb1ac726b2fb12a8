"""Sequence-to-sequence tasks for the encoder-decoder: reverse or sort a random digit string.

Each example is a source of L digits (L uniform in ``[min_length, max_length]``) and a target of the
same L digits reversed (``reverse``) or in ascending order (``sort``), then an end token. Arrays
(``N = max_length + 1`` columns, right-padded with 0):

- ``inputs`` / ``lengths``: the source digits (L real tokens);
- ``inputs2`` / ``lengths2``: the decoder input, BOS then the target (L + 1 real tokens);
- ``labels``: the target then EOS (L + 1 scored positions), -100 elsewhere.

Token ids (source and target share them): 0 padding, 1 BOS, 2 EOS, digit k is ``3 + k``.
Exact-sequence accuracy by chance is ``digits^-L``; per-token chance about ``1 / digits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["BOS_ID", "EOS_ID", "OPERATIONS", "Seq2SeqOptions", "generate"]

OPERATIONS = ("reverse", "sort")
BOS_ID, EOS_ID, FIRST_DIGIT = 1, 2, 3  # the target convention of attnzoo.models.seq2seq (tasks import no models)


@dataclass(frozen=True)
class Seq2SeqOptions:
    """Source lengths ``min_length .. max_length`` (inclusive) over ``digits`` symbols."""

    min_length: int = 4
    max_length: int = 16
    digits: int = 10

    def __post_init__(self) -> None:
        for name in ("min_length", "max_length", "digits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"seq2seq task: {name} must be a positive int, got {value!r}")
        if self.min_length > self.max_length:
            raise ValueError(f"seq2seq task: min_length ({self.min_length}) must be <= max_length ({self.max_length})")

    @property
    def seq_len(self) -> int:
        """N: the longest decoder input (BOS + max_length digits); sources are padded to it too."""
        return self.max_length + 1

    @property
    def vocab_size(self) -> int:
        """Padding, BOS, EOS and the digits."""
        return FIRST_DIGIT + self.digits


def generate(opts: Seq2SeqOptions, operation: str, size: int, rng: np.random.Generator) -> SplitArrays:
    """``size`` examples of ``operation`` (``reverse`` or ``sort``) as :class:`SplitArrays` (see module doc)."""
    if operation not in OPERATIONS:
        raise ValueError(f"seq2seq task: operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    n = opts.seq_len
    lengths = rng.integers(opts.min_length, opts.max_length + 1, size=size)
    cols = np.arange(opts.max_length)[None, :]
    real = cols < lengths[:, None]
    digits = rng.integers(0, opts.digits, size=(size, opts.max_length))
    if operation == "reverse":
        target = np.take_along_axis(digits, np.clip(lengths[:, None] - 1 - cols, 0, None), axis=1)
    else:  # pads sort last
        target = np.sort(np.where(real, digits, opts.digits), axis=1)
    source = np.zeros((size, n), dtype=np.int64)
    source[:, :-1] = np.where(real, digits + FIRST_DIGIT, 0)
    decoder = np.zeros((size, n), dtype=np.int64)
    decoder[:, 0] = BOS_ID
    decoder[:, 1:] = np.where(real, target + FIRST_DIGIT, 0)
    labels = np.full((size, n), -100, dtype=np.int64)
    labels[:, :-1] = np.where(real, target + FIRST_DIGIT, -100)
    labels[np.arange(size), lengths] = EOS_ID
    return SplitArrays(source, lengths.astype(np.int32), labels, decoder, (lengths + 1).astype(np.int32))
