"""Key-value lookup: P (key, value) pairs stored anywhere in N tokens, then Q queries at the end.

A long-range task for the leaderboard (``attnzoo compare``), in the spirit of multi-query associative
recall (Zoology's MQAR) but bidirectional and with each pair in one token. Each example has N
tokens: the first N - Q positions hold noise symbols except P positions, drawn uniformly at random,
which hold pair tokens with P distinct keys out of K; the last Q positions hold query tokens, each
naming one of the stored keys. Every query position is labelled with the value stored under its key
(V classes, chance 1/V); other positions are not scored (-100). A single attention hop from a query
to the matching pair solves it; the hop spans anywhere from Q to N tokens, so a local window of w
tokens per layer reaches the pair only when it was stored within the last ~w * layers positions.
The answer depends on which stored pair matches the query, not on any per-token feature, so a model
without token mixing stays at chance.

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
    """N tokens, P stored pairs with distinct keys out of K, Q queries, V values (classes), S noise symbols."""

    seq_len: int = 128
    num_pairs: int = 8
    num_queries: int = 8
    num_keys: int = 16
    num_values: int = 8
    noise_symbols: int = 4

    def __post_init__(self) -> None:
        for name in ("seq_len", "num_pairs", "num_queries", "num_keys", "num_values", "noise_symbols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kv-lookup: {name} must be a positive int, got {value!r}")
        if self.num_pairs > self.num_keys:
            raise ValueError(f"kv-lookup: num_pairs ({self.num_pairs}) must be <= num_keys ({self.num_keys})")
        if self.num_pairs + self.num_queries > self.seq_len:
            raise ValueError(
                f"kv-lookup: num_pairs + num_queries ({self.num_pairs + self.num_queries}) must be <= seq_len"
                f" ({self.seq_len})"
            )
        if self.num_values < 2:
            raise ValueError(f"kv-lookup: num_values must be >= 2, got {self.num_values}")

    @property
    def vocab_size(self) -> int:
        """Embedding rows: padding, noise, pair and query ids."""
        return 1 + self.noise_symbols + self.num_keys * self.num_values + self.num_keys


def kv_lookup(opts: LookupOptions, size: int, rng: np.random.Generator) -> SplitArrays:
    """``size`` examples: ids ``(size, N)`` int16, lengths ``(size,)`` (all N), labels ``(size, N)`` int64.

    Labels are the stored value (0 .. V-1) at the last Q positions and -100 elsewhere.
    """
    n, p, q = opts.seq_len, opts.num_pairs, opts.num_queries
    k, v, s = opts.num_keys, opts.num_values, opts.noise_symbols
    store = n - q
    ids = rng.integers(1, s + 1, size=(size, n)).astype(np.int16)
    rows = np.arange(size)[:, None]
    positions = np.argsort(rng.random((size, store)), axis=1)[:, :p]  # P distinct slots before the queries
    keys = np.argsort(rng.random((size, k)), axis=1)[:, :p]  # P distinct keys
    values = rng.integers(0, v, size=(size, p))
    ids[rows, positions] = s + 1 + keys * v + values
    asked = rng.integers(0, p, size=(size, q))  # which stored pair each query names
    ids[:, store:] = s + 1 + k * v + np.take_along_axis(keys, asked, axis=1)
    labels = np.full((size, n), -100, dtype=np.int64)
    labels[:, store:] = np.take_along_axis(values, asked, axis=1)
    return SplitArrays(ids, np.full(size, n, dtype=np.int32), labels)
