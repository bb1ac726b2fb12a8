"""Byte-level LRA text tasks: IMDb (``Text``) and AAN pairs (``Retrieval``).

Tokeniser: ``tfds.deprecated.text.ByteTextEncoder`` = UTF-8 byte + 1, 0 = pad, vocab 257, truncated
to ``max_length`` and padded (spec sections 1.2 and 1.3).
IMDb: the ``aclImdb`` folder (``{train,test}/{pos,neg}/<id>_<rating>.txt``); LRA uses the test set
as both validation and test. AAN: ``new_aan_pairs.{train,eval,test}.tsv``, tab-separated without
header and without quoting, 5 columns ``label id1 id2 text1 text2``; the raw text column (including
any ``b'...'`` literal wrapping) is encoded, cut to 10,000 bytes and then to ``max_length``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnzoo.tasks.dataset import pad_sequences
from attnzoo.tasks.spec import SplitArrays

__all__ = ["aan_files", "encode_bytes", "first_bad_utf8_line", "imdb_files", "read_aan", "read_imdb"]

IMDB_SPLIT = {"train": "train", "dev": "test", "test": "test"}
AAN_SPLIT = {"train": "train", "dev": "eval", "test": "test"}


def encode_bytes(data: bytes) -> np.ndarray:
    """ByteTextEncoder ids: byte + 1, shape (len(data),) int16."""
    return np.frombuffer(data, dtype=np.uint8).astype(np.int16) + 1


def _imdb_root(data_dir: Path) -> Path:
    return data_dir / "aclImdb" if (data_dir / "aclImdb").is_dir() else data_dir


def imdb_files(data_dir: Path, split: str) -> list[Path]:
    """The review files of ``split`` (sorted: neg then pos, by numeric id); ValueError if none."""
    root = _imdb_root(Path(data_dir)) / IMDB_SPLIT[split]
    files = []
    for cls in ("neg", "pos"):
        folder = root / cls
        if not folder.is_dir():
            raise ValueError(
                f"text: missing folder {folder}; expected the aclImdb layout {{train,test}}/{{pos,neg}}/*.txt"
            )
        files += sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem.split("_")[0]), p.stem))
    return files


def read_imdb(data_dir: Path, split: str, seq_len: int) -> SplitArrays:
    """Byte-level IMDb: ids (n, seq_len) int16, labels (n,) int64 (neg 0, pos 1)."""
    seqs, labels = [], []
    for path in imdb_files(data_dir, split):
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not valid UTF-8 at byte {err.start}") from None
        seqs.append(encode_bytes(data[:seq_len]))
        labels.append(1 if path.parent.name == "pos" else 0)
    ids, lengths = pad_sequences(seqs, seq_len)
    return SplitArrays(ids, lengths, np.asarray(labels, dtype=np.int64))


def aan_files(data_dir: Path, split: str) -> list[Path]:
    """``[new_aan_pairs.<split>.tsv]`` under ``data_dir`` (or its ``tsv_data/``); ValueError if missing."""
    name = f"new_aan_pairs.{AAN_SPLIT[split]}.tsv"
    for folder in (Path(data_dir), Path(data_dir) / "tsv_data"):
        if (folder / name).is_file():
            return [folder / name]
    raise ValueError(f"retrieval: {name} not found in {data_dir} (or its tsv_data/); use lra_release/tsv_data")


def read_aan(data_dir: Path, split: str, seq_len: int) -> SplitArrays:
    """AAN pairs: ids and ids2 (n, seq_len) int16, labels (n,) int64 in {0, 1}.

    Raises:
        ValueError: naming file and line for bytes that are not UTF-8, a wrong column count, or a label
            other than 0/1.
    """
    (path,) = aan_files(data_dir, split)
    first, second, labels = [], [], []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            for lineno, line in enumerate(handle, start=1):
                _aan_row(path, lineno, line, seq_len, (labels, first, second))
    except UnicodeDecodeError:  # the decoder reads ahead in blocks: find the line in a second pass
        raise ValueError(f"{path}: not valid UTF-8 ({first_bad_utf8_line(path)})") from None
    ids, lengths = pad_sequences(first, seq_len)
    ids2, lengths2 = pad_sequences(second, seq_len)
    return SplitArrays(ids, lengths, np.asarray(labels, dtype=np.int64), ids2, lengths2)


def first_bad_utf8_line(path: Path) -> str:
    """Where ``path`` first fails to decode as UTF-8: ``"line L, byte B: reason"`` (B within the line)."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {lineno}, byte {err.start}: {err.reason}"
    return "the file changed while it was read"


def _aan_row(path: Path, lineno: int, line: str, seq_len: int, out: tuple[list, list, list]) -> None:
    """Parse one AAN line into ``out`` = (labels, first documents, second documents)."""
    labels, first, second = out
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != 5:
        raise ValueError(
            f"{path}:{lineno}: expected 5 tab-separated columns (label id1 id2 text1 text2), got {len(cols)}"
        )
    try:
        label = float(cols[0])
    except ValueError:
        raise ValueError(f"{path}:{lineno}: label {cols[0]!r} is not a number") from None
    if label not in (0.0, 1.0):
        raise ValueError(f"{path}:{lineno}: label {cols[0]!r} out of range (expected 0 or 1)")
    labels.append(int(label))
    first.append(encode_bytes(cols[3].encode("utf-8")[:10000][:seq_len]))
    second.append(encode_bytes(cols[4].encode("utf-8")[:10000][:seq_len]))
