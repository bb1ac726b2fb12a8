"""Corrupt inputs: every loader turns any decode failure into a ValueError that names the file.

Seeded fuzzing: bit flips, truncations, overwritten and inserted random bytes, and (for PNG) chunk
bodies changed with the CRC fixed up, so the damage reaches the decoder. A mutated file may still
decode (then there is nothing to check); when it fails, the error must be a ``ValueError`` (``PngError``
is one) whose message contains the file's path.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from attnzoo.tasks import cache
from attnzoo.tasks.lra import cifar, pathfinder, text
from attnzoo.tasks.lra.pathfinder_params import lra_params
from attnzoo.tasks.png import encode_png_gray, read_png_gray
from attnzoo.tasks.spec import SplitArrays

CASES = 1000


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0 or not buf:  # random bytes
        return rng.bytes(int(rng.integers(0, 64)))
    if kind == 1:  # truncation
        return bytes(buf[: int(rng.integers(0, len(buf)))])
    if kind == 2:  # 1-8 bit flips
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 9))):
            buf[pos] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    start = int(rng.integers(0, len(buf)))
    junk = rng.bytes(int(rng.integers(1, 16)))
    if kind == 3:  # overwrite a run with random bytes
        buf[start : start + len(junk)] = junk
    else:  # insert random bytes
        buf[start:start] = junk
    return bytes(buf)


def _write(path: Path, data: bytes) -> None:
    """Replace ``path``: unlink first (ext4 flushes a file truncated and rewritten in place: ~10 ms here)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _fuzz(path: Path, valid: bytes, load: Callable[[], object], seed: int) -> int:
    """Write ``CASES`` mutations of ``valid`` to ``path`` and ``load()`` each; returns how many were rejected."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(CASES):
        _write(path, _mutate(valid, rng))
        try:
            load()
        except ValueError as err:
            assert str(path) in str(err), f"{type(err).__name__} without the file name: {err}"
            rejected += 1
    return rejected


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _rgb_png() -> bytes:
    image = pytest.importorskip("PIL.Image")
    out = io.BytesIO()
    image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("variant", ["gray", "rgb"])
def test_png_fuzz(tmp_path, variant: str) -> None:
    valid = encode_png_gray(np.arange(48, dtype=np.uint8).reshape(6, 8)) if variant == "gray" else _rgb_png()
    path = tmp_path / "sample_0.png"
    assert _fuzz(path, valid, lambda: read_png_gray(path), seed=1) > CASES // 2
    # structure-aware: damage one chunk's body and fix its CRC, so the decoder itself sees the damage
    rng = np.random.default_rng(2)
    chunks = _png_chunks(valid)
    for _ in range(CASES):
        i = int(rng.integers(len(chunks)))
        damaged = [*chunks[:i], (chunks[i][0], _mutate(chunks[i][1], rng)), *chunks[i + 1 :]]
        _write(path, _png_from(damaged))
        try:
            read_png_gray(path)
        except ValueError as err:
            assert str(path) in str(err), f"{type(err).__name__} without the file name: {err}"
    short_ihdr = _png_from([(b"IHDR", chunks[0][1][:7]), *chunks[1:]])
    _write(path, short_ihdr)
    with pytest.raises(ValueError, match=r"sample_0\.png: IHDR chunk holds 7 bytes, expected 13"):
        read_png_gray(path)


def test_corrupt_rgb_png_names_the_file(tmp_path) -> None:
    """Right size, but row filter 9 (there are five, 0-4): Pillow's OSError comes back as a PngError."""
    pytest.importorskip("PIL.Image")
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)  # 2x2 RGB
    rows = bytes([9, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6])
    path = tmp_path / "sample_5.png"
    _write(path, _png_from([(b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]))
    with pytest.raises(ValueError, match=r"sample_5\.png: Pillow cannot decode it \(OSError: "):
        read_png_gray(path)
    _write(path, _png_from([(b"IHDR", header), (b"IDAT", zlib.compress(rows[:-1])), (b"IEND", b"")]))
    with pytest.raises(ValueError, match=r"sample_5\.png: image data holds 13 bytes, expected 14 for 2x2"):
        read_png_gray(path)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_pickle_fuzz(tmp_path, protocol: int) -> None:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"x", b"labels": [1, 2, 3], b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8)}
    valid = pickle.dumps(batch, protocol=protocol)
    path = tmp_path / "data_batch_1"
    assert _fuzz(path, valid, lambda: cifar.load_batch(path), seed=3 + protocol) > CASES // 2


def test_aan_tsv_fuzz(tmp_path) -> None:
    rows = ["1\t10\t11\tb'first doc'\tsecond doc", "0\t12\t13\tthird é\tfourth"]
    path = tmp_path / "new_aan_pairs.train.tsv"
    valid = ("\n".join(rows) + "\n").encode()
    assert _fuzz(path, valid, lambda: text.read_aan(tmp_path, "train", 16), seed=7) > CASES // 10


def test_imdb_fuzz(tmp_path) -> None:
    for cls in ("neg", "pos"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / "0_3.txt").write_text("a review é", encoding="utf-8")
    path = tmp_path / "train" / "pos" / "0_3.txt"
    assert _fuzz(path, path.read_bytes(), lambda: text.read_imdb(tmp_path, "train", 16), seed=8) > 0


def test_pathfinder_metadata_and_marker_fuzz(tmp_path) -> None:
    p = lra_params(32)
    out = tmp_path / "curv_contour_length_14"
    pathfinder.export_split(out, "pathfinder32", p, "dev", 3, 0)
    folder = out / "dev"

    def load() -> object:  # the split folder itself: locate reads its marker first
        return pathfinder.read_split(pathfinder.locate(folder, out.name, 32, "dev"), "dev", 32)

    meta, marker = folder / "metadata" / "0.npy", folder / pathfinder.MARKER
    assert _fuzz(meta, meta.read_bytes(), load, seed=9) > CASES // 2
    meta.write_bytes(pathfinder.write_layout(folder, p, *pathfinder.generate_images(p, 3, 0, "dev"))[0].read_bytes())
    assert _fuzz(marker, marker.read_bytes(), load, seed=10) > CASES // 2


def test_cache_entry_fuzz_is_a_miss_not_a_crash(tmp_path) -> None:
    """A damaged cache entry is rebuilt: ``read_entry`` answers None (or arrays that pass the shape
    checks) and never raises."""
    arrays = SplitArrays(np.arange(12, dtype=np.int16).reshape(3, 4), np.full(3, 4, np.int32), np.zeros(3, np.int64))
    cache.write_entry(tmp_path / "e", arrays, {"task": "t", "source_hash": "h"})
    rng = np.random.default_rng(11)
    for name in ("header.json", "inputs.npy", "labels.npy"):
        path = tmp_path / "e" / name
        valid = path.read_bytes()
        misses = 0
        for _ in range(CASES // 3):
            _write(path, _mutate(valid, rng))
            got = cache.read_entry(tmp_path / "e", expect_source="h")
            misses += got is None
            if got is not None:
                assert got[0].inputs.shape == (3, 4) and got[0].labels.shape == (3,)
        _write(path, valid)
        assert misses > CASES // 6
