"""Official-format loaders: IMDb folders, AAN TSV, CIFAR-10 pickles (restricted unpickler)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from attnzoo import tasks
from attnzoo.tasks.lra import cifar


def _imdb(root) -> None:
    for split in ("train", "test"):
        for cls, text in (("neg", "bad film"), ("pos", "great film é")):
            folder = root / "aclImdb" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(f"{text} {i}", encoding="utf-8")


def test_imdb_bytes(tmp_path) -> None:
    _imdb(tmp_path)
    ds = tasks.load_split("text", "dev", data_dir=tmp_path, cache_dir=tmp_path / "c", seq_len=12)
    assert len(ds) == 6 and ds.spec.vocab_size == 257
    item = ds[3]
    expected = [b + 1 for b in "great film é 0".encode()][:12]
    assert item["input_ids"].tolist() == expected and item["label"].item() == 1 and item["mask"].all()
    short = ds[0]
    assert short["mask"].sum().item() == len("bad film 0") and short["input_ids"][10:].eq(0).all()


def test_aan_pairs_and_errors(tmp_path) -> None:
    rows = ["1.0\ta\tb\tb'first doc'\tsecond", "0\tc\td\tx\ty"]
    (tmp_path / "new_aan_pairs.eval.tsv").write_text("\n".join(rows) + "\n")
    ds = tasks.load_split("retrieval", "dev", data_dir=tmp_path, cache_dir=tmp_path / "c", seq_len=8)
    batch = tasks.collate([ds[0], ds[1]])
    assert batch["input_ids2"].shape == (2, 8) and batch["label"].tolist() == [1, 0]
    assert batch["input_ids"][0].tolist() == [c + 1 for c in b"b'first "]
    assert batch["mask2"][1].sum().item() == 1
    (tmp_path / "new_aan_pairs.test.tsv").write_text("1\ta\tb\tc\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.test.tsv:1: expected 5 tab-separated columns"):
        tasks.load_split("retrieval", "test", data_dir=tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "new_aan_pairs.test.tsv").write_text("2\ta\tb\tc\td\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.test.tsv:1: label '2' out of range"):
        tasks.load_split("retrieval", "test", data_dir=tmp_path, cache_dir=tmp_path / "c")


def _cifar(root, n: int = 10) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0] = 0
    for name in [*cifar.TRAIN_FILES, "test_batch"]:
        obj = {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)], b"data": data}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return data


def test_cifar_grayscale_split_and_pixel_padding(tmp_path) -> None:
    data = _cifar(tmp_path)
    train = tasks.load_split("image", "train", data_dir=tmp_path, cache_dir=tmp_path / "c")
    dev = tasks.load_split("image", "dev", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert (len(train), len(dev)) == (45, 5)
    rgb = data[1].reshape(3, 1024).astype(np.float64)
    gray = np.floor((0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]) + 0.5)
    assert np.abs(train[1]["input_ids"].numpy() - gray).max() <= 1
    assert train[0]["mask"].sum() == 0  # all-black image: official LRA masks every pixel
    fixed = tasks.load_split("image", "train", data_dir=tmp_path, cache_dir=tmp_path / "c", shift_pixels=True)
    assert fixed[0]["mask"].all() and fixed[0]["input_ids"].eq(1).all() and fixed.spec.vocab_size == 257


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Evil()}, r"data_batch_1: pickle refers to"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}, r"data_batch_1: entry 'labels'\[1\] = 11"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"data_batch_1: entry 'data' must be"),
    ],
)
def test_cifar_rejects_bad_pickles(tmp_path, obj, match: str) -> None:
    _cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=match):
        tasks.load_split("image", "train", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.npy"))


def test_cifar_truncated(tmp_path) -> None:
    _cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"test_batch: cannot read the pickle"):
        cifar.load_batch(path)


def test_missing_official_files_explained(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot be generated; pass data_dir"):
        tasks.load_split("text", "train")
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        tasks.load_split("image", "train", data_dir=tmp_path)
