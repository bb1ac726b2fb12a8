"""Official-format loaders: IMDb folders, AAN TSV, CIFAR-10 pickles (restricted unpickler)."""

from __future__ import annotations

import hashlib
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
    (tmp_path / "new_aan_pairs.test.tsv").write_bytes(b"1\ta\tb\tc\td\n0\ta\tb\t\xff\td\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs.test.tsv: not valid UTF-8 \(line 2, byte 6: invalid start"):
        tasks.load_split("retrieval", "test", data_dir=tmp_path, cache_dir=tmp_path / "c")


# (r, g, b) -> LRA's gray value, worked by hand: G = 0.2989 r + 0.5870 g + 0.1140 b on [0, 255];
# tf.image.rgb_to_grayscale gives trunc(G / 255 * 255.5), where rounding G would give the last column.
KNOWN_GRAY = [
    ((0, 0, 0), 0),  # G = 0                          round: 0
    ((255, 255, 255), 255),  # G = 254.9745 -> 255.474  round: 255
    ((1, 1, 1), 1),  # G = 0.9999 -> 1.0019             round: 1
    ((0, 1, 0), 0),  # G = 0.587 -> 0.588               round: 1
    ((200, 0, 0), 59),  # G = 59.78 -> 59.897           round: 60
    ((0, 255, 0), 149),  # G = 149.685 -> 149.979       round: 150
    ((50, 100, 150), 90),  # G = 90.745 -> 90.923       round: 91
    ((255, 255, 0), 226),  # G = 225.9045 -> 226.347    round: 226
    ((0, 0, 255), 29),  # G = 29.07 -> 29.127           round: 29
    ((10, 20, 30), 18),  # G = 18.149 -> 18.185         round: 18
    ((128, 128, 128), 128),  # G = 127.9872 -> 128.238  round: 128
    ((3, 2, 1), 2),  # G = 2.1847 -> 2.189              round: 2
    ((7, 9, 200), 30),  # G = 30.175 -> 30.234           round: 30
    ((255, 0, 255), 105),  # G = 105.2895 -> 105.496    round: 105
    ((0, 128, 255), 104),  # G = 104.206 -> 104.410     round: 104
    ((90, 60, 30), 65),  # G = 65.541 -> 65.670         round: 66
]
# SHA-256 of tf.image.rgb_to_grayscale over all 2^24 uint8 RGB triples (r-major, then g, then b),
# computed with TensorFlow 2.21.0 on CPU, with oneDNN on and off (both the same)
TF_GRAY_TABLE_SHA256 = "824a76d81dad2c5a2cf1fa0b2c0a5afe7d871ec2970e4fa2809b53ddbecdca93"


def _cifar(root, n: int = 10) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0] = 0
    for i, (rgb, _) in enumerate(KNOWN_GRAY):  # image 1, first pixels (planes R, G, B of 1024 each)
        data[1, [i, 1024 + i, 2048 + i]] = rgb
    for name in [*cifar.TRAIN_FILES, "test_batch"]:
        obj = {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)], b"data": data}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return data


def test_cifar_grayscale_split_and_pixel_padding(tmp_path) -> None:
    data = _cifar(tmp_path)
    train = tasks.load_split("image", "train", data_dir=tmp_path, cache_dir=tmp_path / "c")
    dev = tasks.load_split("image", "dev", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert (len(train), len(dev)) == (45, 5)
    ids = train[1]["input_ids"].numpy()
    assert ids[: len(KNOWN_GRAY)].tolist() == [gray for _, gray in KNOWN_GRAY]
    rgb = data[1].reshape(3, 1024).astype(np.float64)
    exact = np.floor((0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]) * (255.5 / 255))
    np.testing.assert_array_equal(ids, exact)  # no pixel of this image is within float32 error of an integer
    assert train[0]["mask"].sum() == 0  # all-black image: official LRA masks every pixel
    fixed = tasks.load_split("image", "train", data_dir=tmp_path, cache_dir=tmp_path / "c", shift_pixels=True)
    assert fixed[0]["mask"].all() and fixed[0]["input_ids"].eq(1).all() and fixed.spec.vocab_size == 257


def test_grayscale_matches_tensorflow_on_every_rgb_triple() -> None:
    values = np.arange(256, dtype=np.uint8)
    r, g, b = (a.reshape(256, 1, 65536) for a in np.meshgrid(values, values, values, indexing="ij"))
    table = cifar.to_grayscale(np.concatenate([r, g, b], axis=1)[:, :, None, :])
    assert table.shape == (256, 1, 65536) and table.dtype == np.uint8
    assert hashlib.sha256(table.tobytes()).hexdigest() == TF_GRAY_TABLE_SHA256
    flat = table.reshape(-1)
    assert [int(flat[(rr << 16) | (gg << 8) | bb]) for (rr, gg, bb), _ in KNOWN_GRAY] == [v for _, v in KNOWN_GRAY]


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


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x80\x02X\x01\x00\x00\x00\xff.", "UnicodeDecodeError"),  # a str that is not UTF-8
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00bogus\x86R.", "LookupError"),
        (  # an ndarray of 2^50 bytes
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"\x8a\x07\x00\x00\x00\x00\x00\x00\x04\x85C\x01b\x87R.",
            "MemoryError",
        ),
    ],
    ids=["str-not-utf8", "unknown-codec", "huge-array"],
)
def test_cifar_decode_errors_name_the_file(tmp_path, data: bytes, error: str) -> None:
    path = tmp_path / "data_batch_3"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"data_batch_3: cannot read the pickle \({error}: "):
        cifar.load_batch(path)


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
