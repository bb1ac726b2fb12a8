"""Byte-level causal language modelling: predict the next UTF-8 byte of English-like text.

Generated data (no files needed) comes from a small seeded grammar of simple sentences with
number agreement and a little arithmetic, so that a tiny causal model learns spelling, word order,
agreement ("the cat sees" / "the cats see") and single-digit sums on a CPU in a minute or two::

    the small cat sees a red ball in the garden. the dogs chase the bird. 3 + 4 = 7.

With ``data_dir`` the text is the UTF-8 files ``*.txt`` in that folder (sorted by name, joined with
a newline), cut into contiguous train / dev / test parts of 90 / 5 / 5 % of its bytes.

An example is a window of ``N + 1`` bytes: inputs are the first N as ids ``byte + 1`` (0 = padding,
the ``ByteTextEncoder`` convention of LRA Text), labels ``(N,)`` the next byte (0..255) at every
position. Generated windows start at a sentence; file windows tile the part with stride N.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["BytesLMOptions", "encode", "generate_split", "generate_text", "lm_windows", "read_text_split", "text_files"]

SUBJECTS = ("cat", "dog", "bird", "fox", "child", "teacher", "farmer", "robot", "horse", "girl", "boy", "mouse")
PLURALS = {"fox": "foxes", "child": "children", "mouse": "mice"}
OBJECTS = ("ball", "apple", "book", "box", "tree", "river", "house", "kite", "cake", "hat")
ADJECTIVES = ("small", "big", "red", "green", "old", "happy", "quiet", "fast")
VERBS = ("see", "chase", "like", "find", "carry", "watch", "draw", "want", "push", "hold")
PLACES = ("in the garden", "near the river", "at home", "on the hill", "by the sea", "after lunch")
DETERMINERS = ("the", "a", "my", "this")
SPLIT_FRACTIONS = {"train": (0.0, 0.9), "dev": (0.9, 0.95), "test": (0.95, 1.0)}


@dataclass(frozen=True)
class BytesLMOptions:
    """``seq_len`` N: bytes the model reads per example (each position predicts the byte after it)."""

    seq_len: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"bytes-lm: seq_len must be a positive int, got {self.seq_len!r}")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator, nouns: tuple[str, ...], plural: bool) -> str:
    noun = _pick(rng, nouns)
    if plural:
        noun = PLURALS.get(noun, noun + ("es" if noun.endswith(("x", "s")) else "s"))
        det = _pick(rng, ("the", "my", "two", "some"))
    else:
        det = _pick(rng, DETERMINERS)
    adjective = _pick(rng, ADJECTIVES) + " " if rng.random() < 0.5 else ""
    det = "an" if det == "a" and (adjective or noun)[0] in "aeiou" else det
    return f"{det} {adjective}{noun}"


def _sentence(rng: np.random.Generator) -> str:
    """One sentence: a subject-verb-object clause with agreement (optionally a place), or a sum."""
    if rng.random() < 0.2:
        a, b = (int(x) for x in rng.integers(0, 10, size=2))
        return f"{a} + {b} = {a + b}."
    plural = bool(rng.random() < 0.4)
    verb = _pick(rng, VERBS)
    if not plural:
        verb = verb + ("es" if verb.endswith(("sh", "ch")) else "s")
        verb = "carries" if verb == "carrys" else verb
    obj = _noun_phrase(rng, OBJECTS if rng.random() < 0.6 else SUBJECTS, bool(rng.random() < 0.3))
    place = " " + _pick(rng, PLACES) if rng.random() < 0.4 else ""
    return f"{_noun_phrase(rng, SUBJECTS, plural)} {verb} {obj}{place}."


def generate_text(rng: np.random.Generator, min_bytes: int) -> str:
    """Sentences joined by spaces until the text holds at least ``min_bytes`` bytes (ASCII, so chars = bytes)."""
    parts: list[str] = []
    total = -1
    while total < min_bytes:
        parts.append(_sentence(rng))
        total += len(parts[-1]) + 1
    return " ".join(parts)


def encode(data: bytes) -> np.ndarray:
    """UTF-8 bytes to model ids ``byte + 1`` (0 is padding): ``(len(data),)`` int16."""
    return np.frombuffer(data, dtype=np.uint8).astype(np.int16) + 1


def lm_windows(windows: np.ndarray) -> SplitArrays:
    """``(n, N + 1)`` byte windows (uint8) to inputs ``(n, N)`` ids, lengths (all N) and next-byte labels ``(n, N)``."""
    n, width = windows.shape
    inputs = windows[:, :-1].astype(np.int16) + 1
    labels = windows[:, 1:].astype(np.int64)
    return SplitArrays(inputs, np.full(n, width - 1, dtype=np.int32), labels)


def generate_split(opts: BytesLMOptions, size: int, rng: np.random.Generator) -> SplitArrays:
    """``size`` generated windows, each the first ``N + 1`` bytes of a fresh run of sentences."""
    rows = [np.frombuffer(generate_text(rng, opts.seq_len + 1).encode("ascii"), np.uint8) for _ in range(size)]
    return lm_windows(np.stack([row[: opts.seq_len + 1] for row in rows]))


def text_files(data_dir: Path) -> list[Path]:
    """The ``*.txt`` files of ``data_dir``, sorted by name; none is an error naming the folder."""
    files = sorted(Path(data_dir).glob("*.txt"))
    if not files:
        raise ValueError(f"bytes-lm: no *.txt files in {data_dir} (put UTF-8 text files there)")
    return files


def read_text_split(opts: BytesLMOptions, data_dir: Path, split: str) -> SplitArrays:
    """Windows of ``N + 1`` bytes with stride N over split ``split``'s part of the folder's text."""
    chunks = []
    for path in text_files(data_dir):
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise ValueError(f"bytes-lm: {path} is not UTF-8 (line {line}: {err.reason})") from None
        chunks.append(data)
    text = np.frombuffer(b"\n".join(chunks), dtype=np.uint8)
    lo, hi = (int(f * len(text)) for f in SPLIT_FRACTIONS[split])
    part, n = text[lo:hi], opts.seq_len
    count = (len(part) - 1) // n
    if count < 1:
        share = SPLIT_FRACTIONS[split][1] - SPLIT_FRACTIONS[split][0]
        raise ValueError(
            f"bytes-lm: the {split} part of {data_dir} has {len(part)} bytes, fewer than seq_len + 1 = {n + 1} "
            f"(the text holds {len(text)} bytes; {split} gets {share:.0%})"
        )
    starts = np.arange(count)[:, None] * n + np.arange(n + 1)[None, :]
    return lm_windows(part[starts])
