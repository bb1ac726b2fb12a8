"""Key-value lookup: the first token names a key; the answer is the value stored with it far away.

A long-range task for the leaderboard (``attnzoo compare``). Each example has N tokens: position 0
is a query token for key k*; the other N - 1 positions hold noise symbols, except P positions drawn
uniformly at random, which hold (key, value) pair tokens with P distinct keys, one of them k*. The
label is the value stored with k* (V classes, chance 1/V). Each pair is one token, so a single
attention hop from the query to the matching pair solves the task; the distance that hop spans is
uniform on 1 .. N - 1, so a local window of w tokens reaches it in about a fraction w / N of the
examples. The contents are a set (order carries no information), and the answer depends on which
pair matches the query, so a model without token mixing cannot beat chance.

Token ids (0 is padding): noise 1 .. S; pair (k, v) ``S + 1 + k * V + v``; query for key k
``S + 1 + K * V + k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["LookupOptions", "kv_lookup"]


@dataclass(frozen=True)
class LookupOptions:
    """N tokens, P stored pairs with distinct keys out of K, V values (classes), S noise symbols."""

    seq_len: int = 256
    num_pairs: int = 8
    num_keys: int = 16
    num_values: int = 8
    noise_symbols: int = 8

    def __post_init__(self) -> None:
        for name in ("seq_len", "num_pairs", "num_keys", "num_values", "noise_symbols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kv-lookup: {name} must be a positive int, got {value!r}")
        if self.num_pairs > self.num_keys:
            raise ValueError(f"kv-lookup: num_pairs ({self.num_pairs}) must be <= num_keys ({self.num_keys})")
        if self.num_pairs >= self.seq_len:
            raise ValueError(f"kv-lookup: num_pairs ({self.num_pairs}) must be < seq_len ({self.seq_len})")
        if self.num_values < 2:
            raise ValueError(f"kv-lookup: num_values must be >= 2, got {self.num_values}")

    @property
    def vocab_size(self) -> int:
        """Embedding rows: padding, noise, pair and query ids."""
        return 1 + self.noise_symbols + self.num_keys * self.num_values + self.num_keys


def kv_lookup(opts: LookupOptions, size: int, rng: np.random.Generator) -> SplitArrays:
    """``size`` examples: ids ``(size, N)`` int16, lengths ``(size,)`` (all N), labels ``(size,)`` in 0 .. V-1."""
    n, p, k, v, s = opts.seq_len, opts.num_pairs, opts.num_keys, opts.num_values, opts.noise_symbols
    ids = rng.integers(1, s + 1, size=(size, n)).astype(np.int16)
    rows = np.arange(size)[:, None]
    positions = 1 + np.argsort(rng.random((size, n - 1)), axis=1)[:, :p]  # P distinct slots after the query
    keys = np.argsort(rng.random((size, k)), axis=1)[:, :p]  # P distinct keys
    values = rng.integers(0, v, size=(size, p))
    ids[rows, positions] = s + 1 + keys * v + values
    asked = rng.integers(0, p, size=size)
    ids[:, 0] = s + 1 + k * v + keys[np.arange(size), asked]
    labels = values[np.arange(size), asked].astype(np.int64)
    return SplitArrays(ids, np.full(size, n, dtype=np.int32), labels)
