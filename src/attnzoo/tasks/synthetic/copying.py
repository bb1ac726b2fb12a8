"""Copying, selective copying (spec 5.3) and associative recall (spec 5.4).

Copying (``s4:src/dataloaders/datasets/copying.py``, ``variable=False``): alphabet A; M data tokens
uniform on 1..A-2, then L zeros, then M markers (A-1); the target is the M tokens (reversed with
``reverse``) at the last M positions. Selective copying (``variable=True``, Mamba): the M tokens sit at
sorted random positions (``randperm(L+M)[:M]``) of a zero sequence of length L+M, then M markers.
Associative recall (``safari:src/dataloaders/synthetics.py:generate_assoc_recall``): a fresh key->value
map per example (keys = first half of the non-special vocabulary sorted as strings, values = second
half), ``input_seq_len // 2`` pairs drawn with replacement, then ``=>``, a present key and its value;
the model sees the shifted LM pairs (``input_seq_len + 2``); train labels every next token, dev/test
only the final value (others -100). Examples are de-duplicated.
Input ids are the task's token + 1 (0 stays the padding id); labels are the task's own token values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["CopyOptions", "RecallOptions", "associative_recall", "copying"]


@dataclass(frozen=True)
class CopyOptions:
    """Total length N = L + 2M, M tokens to copy, alphabet A (incl. blank 0 and marker A-1)."""

    seq_len: int = 120
    num_tokens: int = 10
    alphabet: int = 10
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.alphabet < 3 or self.num_tokens < 1 or self.seq_len < 2 * self.num_tokens + 1:
            raise ValueError(f"copy: need alphabet >= 3, num_tokens >= 1, seq_len > 2 * num_tokens; got {self}")


def copying(opts: CopyOptions, size: int, rng: np.random.Generator, *, selective: bool) -> SplitArrays:
    """Copy tasks: ids (size, N) int16, labels (size, N) int64 with -100 except the last M positions."""
    m, a, n = opts.num_tokens, opts.alphabet, opts.seq_len
    blank = n - 2 * m
    data = rng.integers(1, a - 1, size=(size, m))
    seq = np.zeros((size, n), dtype=np.int16)
    if selective:
        pos = np.sort(np.argsort(rng.random((size, blank + m)), axis=1)[:, :m], axis=1)
        np.put_along_axis(seq, pos, data, axis=1)
    else:
        seq[:, :m] = data
    seq[:, blank + m :] = a - 1
    labels = np.full((size, n), -100, dtype=np.int64)
    labels[:, n - m :] = data[:, ::-1] if opts.reverse else data
    return SplitArrays(seq + 1, np.full(size, n, dtype=np.int32), labels)


@dataclass(frozen=True)
class RecallOptions:
    """Vocabulary size V (incl. the two specials) and ``input_seq_len`` (N = input_seq_len + 2)."""

    vocab: int = 20
    input_seq_len: int = 40

    def __post_init__(self) -> None:
        if self.vocab < 6 or self.input_seq_len < 2:
            raise ValueError(f"associative-recall: need vocab >= 6 and input_seq_len >= 2, got {self}")


def associative_recall(opts: RecallOptions, size: int, rng: np.random.Generator, *, lm_labels: bool) -> SplitArrays:
    """Associative recall: ids (size, N) int16, labels (size, N) int64 (-100 = ignore)."""
    names = sorted(str(i) for i in range(opts.vocab - 2))  # token strings sorted as strings
    ids = {name: i for i, name in enumerate(names)}
    copy_prefix = opts.vocab - 2
    keys = np.asarray([ids[k] for k in names[: len(names) // 2]])
    values = np.asarray([ids[v] for v in names[len(names) // 2 :]])
    pairs = opts.input_seq_len // 2
    rows: dict[bytes, np.ndarray] = {}
    for _ in range(100):
        batch = 2 * (size - len(rows)) + 16
        mapping = values[rng.integers(0, len(values), size=(batch, len(keys)))]  # key index -> value token
        kidx = rng.integers(0, len(keys), size=(batch, pairs))
        body = np.stack([keys[kidx], np.take_along_axis(mapping, kidx, axis=1)], axis=-1).reshape(batch, -1)
        q = kidx[np.arange(batch), rng.integers(0, pairs, size=batch)]  # a key that is present
        raw = np.concatenate(
            [body, np.full((batch, 1), copy_prefix), keys[q][:, None], mapping[np.arange(batch), q][:, None]], axis=1
        )
        for row in raw:
            rows.setdefault(row.tobytes(), row)
            if len(rows) == size:
                break
        if len(rows) == size:
            break
    if len(rows) < size:
        raise ValueError(f"associative-recall: only {len(rows)} distinct examples exist for {opts}; ask for fewer")
    raw = np.stack(list(rows.values()))
    x, y = raw[:, :-1], raw[:, 1:].astype(np.int64)
    if not lm_labels:
        y[:, :-1] = -100
    return SplitArrays((x + 1).astype(np.int16), np.full(size, x.shape[1], dtype=np.int32), y)
