"""The byte-level causal LM task ``bytes-lm``: generated sentences and local text files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from attnzoo import tasks
from attnzoo.tasks.synthetic.bytes_lm import BytesLMOptions, generate_text

SENTENCE = re.compile(r"(\d \+ \d = \d+|[a-z ]+)\.")


def text_of(ids: np.ndarray) -> bytes:
    return bytes((np.asarray(ids) - 1).astype(np.uint8).tolist())


def test_spec() -> None:
    spec = tasks.get("bytes-lm", seq_len=64)
    assert (spec.seq_len, spec.input_kind, spec.vocab_size, spec.num_classes) == (64, "bytes", 257, 256)
    assert spec.target == "sequence" and spec.pad_id == 0
    with pytest.raises(ValueError, match="bytes-lm: seq_len must be a positive int, got 0"):
        BytesLMOptions(seq_len=0)
    with pytest.raises(ValueError, match="bytes-lm: seq_len must be a positive int, got True"):
        BytesLMOptions(seq_len=True)


def test_generated_windows_are_next_byte_pairs(tmp_path: Path) -> None:
    ds = tasks.load_split("bytes-lm", "train", cache_dir=tmp_path, size=6, seq_len=96)
    arrays = ds.arrays
    assert arrays.inputs.shape == arrays.labels.shape == (6, 96) and (arrays.lengths == 96).all()
    assert arrays.inputs.min() >= 1 and arrays.labels.max() <= 255
    for ids, labels in zip(arrays.inputs, arrays.labels, strict=True):
        np.testing.assert_array_equal(ids[1:] - 1, labels[:-1])  # label t is input t + 1's byte
        text = text_of(ids).decode("ascii")
        assert SENTENCE.match(text), text  # every window starts at a sentence
    item = ds[0]
    assert item["mask"].all() and item["label"].shape == (96,)
    again = tasks.load_split("bytes-lm", "train", cache_dir=tmp_path / "other", size=6, seq_len=96)
    np.testing.assert_array_equal(again.arrays.inputs, arrays.inputs)  # seeded
    dev = tasks.load_split("bytes-lm", "dev", cache_dir=tmp_path, size=6, seq_len=96)
    assert not np.array_equal(dev.arrays.inputs, arrays.inputs)  # independent streams per split


def test_grammar_agreement_and_sums() -> None:
    text = generate_text(np.random.default_rng(5), 20_000)
    sentences = text.split(". ")
    assert len(text) >= 20_000 and len(sentences) > 300
    sums = [s for s in sentences if "+" in s]
    assert 0.1 < len(sums) / len(sentences) < 0.3
    for line in sums:
        a, b, c = (int(x) for x in re.findall(r"\d+", line))
        assert a + b == c
    assert re.search(r"\bthe (\w+ )?cat (sees|chases|likes|finds|carries|watches|draws|wants|pushes|holds)\b", text)
    assert re.search(r"\b(two|some) (\w+ )?children (see|chase|like|find|carry|watch|draw|want|push|hold)\b", text)
    assert not re.search(r"\b(the|a|my|this) (\w+ )?cat (see|chase|like|find|carry|watch|draw|want|push|hold)\b", text)
    assert not re.search(r"\ba [aeiou]", text) and re.search(r"\ban [aeiou]", text)


def test_local_text_files(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_bytes(("héllo wörld " * 300).encode())
    (folder / "b.txt").write_bytes(b"second file\n" * 50)
    (folder / "notes.md").write_bytes(b"\xff not read")
    whole = b"\n".join(p.read_bytes() for p in sorted(folder.glob("*.txt")))
    train = tasks.load_split("bytes-lm", "train", data_dir=folder, cache_dir=tmp_path / "c", seq_len=32).arrays
    test = tasks.load_split("bytes-lm", "test", data_dir=folder, cache_dir=tmp_path / "c", seq_len=32).arrays
    stop = int(0.9 * len(whole))
    assert len(train) == (stop - 1) // 32 and len(test) == (len(whole) - int(0.95 * len(whole)) - 1) // 32
    assert text_of(train.inputs[0]) == whole[:32] and text_of(train.inputs[1]) == whole[32:64]
    assert bytes(train.labels[0].astype(np.uint8).tolist()) == whole[1:33]
    assert text_of(test.inputs[0]) == whole[int(0.95 * len(whole)) :][:32]


def test_local_text_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bytes-lm: no \*.txt files in"):
        tasks.load_split("bytes-lm", "train", data_dir=tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "bad.txt").write_bytes(b"fine\nstill fine\nnot \xff fine")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 \(line 3: invalid start byte\)"):
        tasks.load_split("bytes-lm", "train", data_dir=tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "bad.txt").write_bytes(b"short text " * 20)
    with pytest.raises(ValueError, match=r"the dev part of .* has 11 bytes, fewer than seq_len \+ 1 = 129"):
        tasks.load_split("bytes-lm", "dev", data_dir=tmp_path, cache_dir=tmp_path / "c")
