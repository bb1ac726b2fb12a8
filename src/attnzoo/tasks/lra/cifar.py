"""Grayscale CIFAR-10 (LRA ``Image``) from the official ``cifar-10-batches-py`` pickles, safely.

The batches are Python pickles; they are read with a restricted unpickler that resolves only the
globals an array needs (numpy ``_reconstruct``/``_frombuffer``, ``ndarray``, ``dtype``, ``_codecs.encode``),
and the result must be a dict holding ``data`` (uint8, (n, 3072)) and ``labels`` (a list of ints 0..9). Splits as in LRA
(spec 1.4): train = first 90% of the 50,000 training images, dev = last 10%, test = ``test_batch``.
Grayscale exactly as LRA's ``tf.image.rgb_to_grayscale`` on TFDS's uint8 images (see ``to_grayscale``).
Tokens are the raw pixel values 0..255.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.tasks.spec import SplitArrays

__all__ = ["cifar_files", "load_batch", "read_cifar_gray", "read_split", "to_grayscale"]

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


# what unpickling damaged bytes raises: the pickle machine's own errors, and whatever the allowed
# constructors raise on bad arguments (codec names and bytes, array shapes, huge lengths)
_DECODE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    LookupError,
    TypeError,
    ValueError,
    MemoryError,
    OverflowError,
    RecursionError,
)


class _ForbiddenGlobal(ValueError):
    pass


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _ForbiddenGlobal(
                f"{self.where}: pickle refers to {module}.{name}; only numpy arrays, lists and dicts are allowed"
            )
        return super().find_class(module, name)


def load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (n, 3, 32, 32) uint8 and labels (n,) int64.

    Raises:
        ValueError: naming the file (and entry) for a damaged pickle, a disallowed global, or
            a missing/ill-shaped ``data`` or ``labels`` entry.
    """
    where = str(path)
    try:
        obj = _ArrayOnlyUnpickler(Path(path).read_bytes(), where).load()
    except _ForbiddenGlobal:
        raise
    except _DECODE_ERRORS as err:
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
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label <= 9:
            raise ValueError(f"{where}: entry 'labels'[{i}] = {label!r} is not a class id 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


_WEIGHTS = np.asarray([0.2989, 0.5870, 0.1140], dtype=np.float32)
# per channel and value: float32(v) * float32(1/255) (convert_image_dtype uint8 -> float32), times the weight
_CHANNEL_TERMS = (np.arange(256, dtype=np.float32) * np.float32(1.0 / 255))[None, :] * _WEIGHTS[:, None]
_CHUNK = 2048  # images per step: ~8 MiB float32 temporaries


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_grayscale`` of uint8 images, bit for bit: (n, 3, H, W) uint8 -> (n, H, W) uint8.

    TensorFlow's steps, all in float32: ``convert_image_dtype`` to float multiplies by
    ``float32(1 / 255)``; the weighted sum ``0.2989 r + 0.5870 g + 0.1140 b`` (added left to right);
    ``convert_image_dtype`` back to uint8 multiplies by ``255.5`` and *truncates* (a plain cast, no
    rounding). So ``(0, 255, 0)`` gives ``trunc(149.978) = 149``, not ``round(149.685) = 150``.
    Checked against TensorFlow 2.21 on CPU (with and without oneDNN): equal on all 2^24 RGB triples
    (the test holds the SHA-256 of that table). About 47 triples sit within one float32 rounding of an
    integer, where another order of the three additions would change the result.
    """
    out = np.empty((images.shape[0], *images.shape[2:]), dtype=np.uint8)
    for start in range(0, images.shape[0], _CHUNK):
        rgb = images[start : start + _CHUNK]
        gray = _CHANNEL_TERMS[0][rgb[:, 0]] + _CHANNEL_TERMS[1][rgb[:, 1]]
        gray += _CHANNEL_TERMS[2][rgb[:, 2]]
        gray *= np.float32(255.5)
        out[start : start + _CHUNK] = gray  # float -> uint8 assignment truncates, like tf.cast
    return out


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


def read_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Colour images (n, 3, 32, 32) uint8 and labels (n,) of ``split`` (train: first 90 %, dev: last 10 %)."""
    images, labels = zip(*(load_batch(f) for f in cifar_files(data_dir, split)), strict=True)
    x, y = np.concatenate(images), np.concatenate(labels)
    if split == "test":
        return x, y
    cut = round(0.9 * len(y))
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


def read_cifar_gray(data_dir: Path, split: str, shift_pixels: bool) -> SplitArrays:
    """Grayscale CIFAR-10: ids (n, 1024) int16 (pixel, or pixel + 1 if ``shift_pixels``), labels (n,)."""
    images, y = read_split(data_dir, split)
    gray = to_grayscale(images).reshape(-1, 1024)
    ids = gray.astype(np.int16) + (1 if shift_pixels else 0)
    return SplitArrays(ids, np.full(len(y), 1024, dtype=np.int32), y)
