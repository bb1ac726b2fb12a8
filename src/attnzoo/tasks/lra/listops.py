"""ListOps (LRA): the official generator, TSV reader/writer and tokeniser.

Generator: ``LRA:lra_benchmarks/data/listops.py`` (spec section 1.1). Trees are drawn with
``generate_tree(1, max_depth, max_args)`` in the official order (children before the operator),
kept when ``min_length < length < max_length`` (strict), and de-duplicated. The official split is an
arbitrary partition of one set of distinct trees; here each split is generated from its own seed
and a tree belongs to split s only if ``crc32(source) % 10`` falls in s's buckets (train 0-7, dev 8,
test 9), so the splits are disjoint without generating them together.

Tokenisation (``listops/input_pipeline.py``): ``]`` -> ``X``, drop ``(`` and ``)``, split on
whitespace. The official vocabulary order depends on Python set order; this one is fixed:
0 = pad, ``0``..``9`` -> 1..10, ``[MAX [MED [MIN [SM`` -> 11..14, ``X`` -> 15, unknown -> 16.

Reading files follows the official loader: a token outside the vocabulary becomes the OOV id (its
``TokenTextEncoder`` has one OOV bucket) and a row longer than the model length N is truncated to
N (its ``max_length``); :func:`encode` does both and warns once per file with the counts. Malformed
rows (header, column count, label, UTF-8, a blank line before data) are refused naming the line;
blank lines at the end of a file are ignored.
"""

from __future__ import annotations

import random
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnzoo.io import atomic_open
from attnzoo.progress import progress
from attnzoo.tasks.dataset import pad_sequences
from attnzoo.tasks.lra.text import first_bad_utf8_line

__all__ = [
    "VOCAB",
    "ListOpsOptions",
    "encode",
    "evaluate_tree",
    "generate_examples",
    "generate_tree",
    "read_tsv",
    "tokenize",
    "write_tsv",
]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
VALUE_P = 0.25
END = "]"
VOCAB: dict[str, int] = {
    **{str(d): d + 1 for d in range(10)},
    "[MAX": 11,
    "[MED": 12,
    "[MIN": 13,
    "[SM": 14,
    "X": 15,
}
OOV_ID = 16
VOCAB_SIZE = 17
SPLIT_BUCKETS = {"train": range(0, 8), "dev": range(8, 9), "test": range(9, 10)}
HEADER = "Source\tTarget"


@dataclass(frozen=True)
class ListOpsOptions:
    """Generator bounds (official: depth 10, args 10, lengths strictly between 500 and 2000)."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000
    seq_len: int = 2000  # padded model length N; official truncates/pads to max_length

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= 50:
            raise ValueError(f"listops: max_depth must be in [1, 50], got {self.max_depth}")
        if self.max_args < 2:
            raise ValueError(f"listops: max_args must be >= 2, got {self.max_args}")
        if not 0 <= self.min_length < self.max_length - 1:
            raise ValueError(
                f"listops: need 0 <= min_length < max_length - 1, got {self.min_length}, {self.max_length}"
            )
        if self.seq_len < 2:
            raise ValueError(f"listops: seq_len must be >= 2, got {self.seq_len}")


def _median(values: list[int]) -> int:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else int((s[mid - 1] + s[mid]) / 2)  # int(np.median(args))


def _apply(op: str, values: list[int]) -> int:
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return _median(values)
    return sum(values) % 10  # [SM


class _TooLong(Exception):
    """Raised inside :func:`generate_tree` once a tree has reached its token limit."""


def generate_tree(
    rng: random.Random, depth: int, max_depth: int, max_args: int, limit: int | None = None
) -> tuple[str, int, int] | None:
    """One official ListOps tree, drawn with the official ``random`` call order.

    Args:
        rng: the random stream.
        depth, max_depth, max_args: the official ``generate_tree(depth, max_depth, max_args)`` arguments.
        limit: stop drawing (and return ``None``) as soon as the tree has ``limit`` tokens. A tree
            that long would be rejected anyway, so the trees returned have exactly the official
            distribution; only the stream after an abandoned tree differs (official trees with
            max_depth 10 run to tens of thousands of tokens, and drawing them dominates the time).

    Returns:
        ``(source, value, length)``: the TSV source string (``to_string`` of the left-nested pairs),
        the expression's value 0..9 and its token length (operator + ``]`` + children); ``None``
        when ``limit`` was reached.
    """
    budget = [limit if limit is not None else -1]
    try:
        return _draw(rng, depth, max_depth, max_args, budget)
    except _TooLong:
        return None


def _spend(budget: list[int], tokens: int) -> None:
    if budget[0] >= 0:
        budget[0] -= tokens
        if budget[0] <= 0:
            raise _TooLong


def _draw(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int]) -> tuple[str, int, int]:
    r = rng.random() if depth < max_depth else 1
    if r > VALUE_P:
        leaf = rng.choice(range(10))
        _spend(budget, 1)
        return str(leaf), leaf, 1
    n = rng.randint(2, max_args)
    _spend(budget, 2)
    children = [_draw(rng, depth + 1, max_depth, max_args, budget) for _ in range(n)]
    op = rng.choice(OPERATORS)
    # ((((op, c0), c1), ...), ']') printed as "( ( ... ( op s0 ) s1 ) ... ] )"
    source = "( " * (n + 1) + op + " " + " ) ".join(c[0] for c in children) + " ) ] )"
    return source, _apply(op, [c[1] for c in children]), 2 + sum(c[2] for c in children)


def evaluate_tree(source: str) -> int:
    """Value of a ListOps source string in either the TSV form or the tokenised (``X``) form."""
    stack: list[list[object]] = []
    result: int | None = None
    for tok in source.replace("(", " ").replace(")", " ").split():
        if tok.startswith("["):
            stack.append([tok])
        elif tok in ("]", "X"):
            frame = stack.pop()
            value = _apply(str(frame[0]), [int(v) for v in frame[1:]])  # type: ignore[call-overload]
            if stack:
                stack[-1].append(value)
            else:
                result = value
        elif stack:
            stack[-1].append(int(tok))
        else:
            result = int(tok)
    if result is None or stack:
        raise ValueError(f"listops: unbalanced expression {source[:60]!r}")
    return result


def generate_examples(opts: ListOpsOptions, split: str, size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``size`` distinct trees of ``split``: sources and labels (size,) int64, deterministic in ``seed``."""
    rng = random.Random(f"listops-{seed}-{split}")
    buckets = SPLIT_BUCKETS[split]
    seen: dict[str, int] = {}
    bar = progress(total=size, desc=f"listops {split}")
    draws = 0
    while len(seen) < size:
        draws += 1
        if draws > 1000 * size + 100_000:
            raise ValueError(
                f"listops: only {len(seen)} distinct trees of {size} after {draws} draws; relax the bounds"
            )
        tree = generate_tree(rng, 1, opts.max_depth, opts.max_args, limit=opts.max_length)
        if tree is None:
            continue
        source, value, length = tree
        if (
            opts.min_length < length < opts.max_length
            and zlib.crc32(source.encode()) % 10 in buckets
            and source not in seen
        ):
            seen[source] = value
            bar.update(1)
    bar.close()
    return list(seen), np.fromiter(seen.values(), dtype=np.int64, count=size)


def tokenize(source: str) -> np.ndarray:
    """Official ListOps tokenisation; ids of shape (length,) int16."""
    toks = source.replace("]", "X").replace("(", "").replace(")", "").split()
    return np.fromiter((VOCAB.get(t, OOV_ID) for t in toks), dtype=np.int16, count=len(toks))


def encode(sources: list[str], seq_len: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``sources`` into ``(ids (n, seq_len) int16, lengths (n,) int32)``, as the official loader.

    Unknown tokens become the OOV id and rows longer than ``seq_len`` are truncated; when either
    happens, one ``UserWarning`` naming ``where`` (a file) gives the counts and the commonest unknown tokens.
    """
    rows = [tokenize(source) for source in sources]
    ids, lengths = pad_sequences(rows, seq_len)
    unknown: Counter[str] = Counter()
    for source, row in zip(sources, rows, strict=True):
        if (row == OOV_ID).any():
            toks = source.replace("]", "X").replace("(", "").replace(")", "").split()
            unknown.update(t for t in toks if t not in VOCAB)
    long_rows = [len(row) for row in rows if len(row) > seq_len]
    notes = []
    if unknown:
        common = ", ".join(f"{tok!r} x{n}" for tok, n in unknown.most_common(3))
        notes.append(f"{sum(unknown.values())} unknown tokens mapped to the OOV id {OOV_ID} ({common})")
    if long_rows:
        longest = max(long_rows)
        notes.append(f"{len(long_rows)} of {len(rows)} rows longer than N = {seq_len} truncated (longest {longest})")
    if notes:
        warnings.warn(f"listops {where}: " + "; ".join(notes), stacklevel=2)
    return ids, lengths


def write_tsv(path: Path, sources: list[str], labels: np.ndarray) -> None:
    """Write the official ``Source<TAB>Target`` TSV (with header) atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(HEADER + "\n")
        for source, label in zip(sources, labels.tolist(), strict=True):
            handle.write(f"{source}\t{label}\n")


def read_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """Read an official ListOps TSV.

    Returns:
        ``(sources, labels)`` with labels (n,) int64 in 0..9.

    Raises:
        ValueError: naming the file and line for a missing header, a wrong column count, a bad label
            or bytes that are not UTF-8.
    """
    try:
        return _read_rows(path)
    except UnicodeDecodeError:  # the decoder reads ahead in blocks: find the line in a second pass
        raise ValueError(f"{path}: not valid UTF-8 ({first_bad_utf8_line(path)})") from None


def _read_rows(path: Path) -> tuple[list[str], np.ndarray]:
    sources: list[str] = []
    labels: list[int] = []
    blank = 0  # the first blank line seen, an error if a row follows it
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() and lineno > 1:
                blank = blank or lineno
                continue
            if blank:
                raise ValueError(f"{path}:{blank}: blank line before the row at line {lineno}")
            if lineno == 1:
                if line != HEADER:
                    raise ValueError(f"{path}:1: expected the header 'Source<TAB>Target', got {line[:40]!r}")
                continue
            cols = line.split("\t")
            if len(cols) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated columns, got {len(cols)}")
            try:
                label = int(cols[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: label {cols[1]!r} is not an integer") from None
            if not 0 <= label <= 9:
                raise ValueError(f"{path}:{lineno}: label {label} out of range 0..9")
            sources.append(cols[0])
            labels.append(label)
    return sources, np.asarray(labels, dtype=np.int64)
