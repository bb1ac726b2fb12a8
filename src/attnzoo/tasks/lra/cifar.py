"""Grayscale CIFAR-10 (LRA ``Image``) from the official ``cifar-10-batches-py`` pickles, safely.

The batches are Python pickles; they are read with a restricted unpickler that resolves only the
globals an array needs (numpy ``_reconstruct``/``_frombuffer``, ``ndarray``, ``dtype``, ``_codecs.encode``),
and the result must be a dict holding ``data`` (uint8, (n, 3072)) and ``labels`` (a list of ints 0..9). Splits as in LRA
(spec 1.4): train = first 90% of the 50,000 training images, dev = last 10%, test = ``test_batch``.
Grayscale as ``tf.image.rgb_to_grayscale`` on uint8: weights 0.2989/0.5870/0.1140 in float32 on
x/255, back to uint8 by rounding. Tokens are the raw pixel values 0..255.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["cifar_files", "load_batch", "read_cifar_gray", "to_grayscale"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),  # ndarray pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
}
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise ValueError(
                f"{self.where}: pickle refers to {module}.{name}; only numpy arrays, lists and dicts are allowed"
            )
        return super().find_class(module, name)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (n, 3, 32, 32) uint8 and labels (n,) int64.

    Raises:
        ValueError: naming the file and entry for a truncated pickle, a disallowed global, or
            a missing/ill-shaped ``data`` or ``labels`` entry.
    """
    where = str(path)
    try:
        obj = _ArrayOnlyUnpickler(Path(path).read_bytes(), where).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as err:
        raise ValueError(f"{where}: cannot read the pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(
            f"{where}: entry 'data' must be a uint8 array of shape (n, 3072), got {type(data).__name__} {shape}"
        )
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise ValueError(f"{where}: entry 'labels' must be a list of {data.shape[0]} ints")
    for i, label in enumerate(labels):
        if not isinstance(label, int) or not 0 <= label <= 9:
            raise ValueError(f"{where}: entry 'labels'[{i}] = {label!r} is not a class id 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_grayscale`` for uint8 images (n, 3, H, W) -> (n, H, W) uint8."""
    x = images.astype(np.float32) / np.float32(255.0)
    w = np.asarray([0.2989, 0.5870, 0.1140], dtype=np.float32)
    gray = np.tensordot(w, x, axes=([0], [1]))
    return np.clip(np.floor(gray * np.float32(255.0) + np.float32(0.5)), 0, 255).astype(np.uint8)


def _root(data_dir: Path) -> Path:
    sub = Path(data_dir) / "cifar-10-batches-py"
    return sub if sub.is_dir() else Path(data_dir)


def cifar_files(data_dir: Path, split: str) -> list[Path]:
    """The batch files ``split`` is read from; ValueError naming the missing one."""
    root = _root(data_dir)
    files = [root / "test_batch"] if split == "test" else [root / n for n in TRAIN_FILES]
    for f in files:
        if not f.is_file():
            raise ValueError(
                f"image: missing {f}; unpack cifar-10-python.tar.gz (cifar-10-batches-py/) into the data dir"
            )
    return files


def read_cifar_gray(data_dir: Path, split: str, shift_pixels: bool) -> SplitArrays:
    """Grayscale CIFAR-10: ids (n, 1024) int16 (pixel, or pixel + 1 if ``shift_pixels``), labels (n,)."""
    images, labels = zip(*(load_batch(f) for f in cifar_files(data_dir, split)), strict=True)
    gray = to_grayscale(np.concatenate(images)).reshape(-1, 1024)
    y = np.concatenate(labels)
    if split != "test":
        cut = round(0.9 * len(y))
        gray, y = (gray[:cut], y[:cut]) if split == "train" else (gray[cut:], y[cut:])
    ids = gray.astype(np.int16) + (1 if shift_pixels else 0)
    return SplitArrays(ids, np.full(len(y), 1024, dtype=np.int32), y)
