"""Minimal PNG codec for 8-bit grayscale images (the format of the official Pathfinder files).

``write_png_gray`` writes one IHDR/IDAT/IEND file with filter type 0; ``read_png_gray`` decodes
8-bit grayscale, non-interlaced PNGs with any of the five row filters, and hands other PNG variants
to Pillow when it is installed. Only zlib, struct and numpy are required.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["PngError", "encode_png_gray", "read_png_gray", "write_png_gray"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngError(ValueError):
    """A PNG file that cannot be decoded; the message names the file and the problem."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png_gray(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an 8-bit grayscale image of shape (H, W) (dtype uint8)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"encode_png_gray: expected a uint8 (H, W) array, got {image.dtype} {image.shape}")
    h, w = image.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # filter byte 0 ("None") in front of every row
    raw[:, 1:] = image
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_png_gray(path: str | Path, image: np.ndarray) -> None:
    """Write ``image`` (H, W) uint8 to ``path`` atomically."""
    from attnzoo.io import atomic_write_bytes

    atomic_write_bytes(path, encode_png_gray(image))


def _unfilter(raw: np.ndarray, h: int, w: int, where: str) -> np.ndarray:
    rows = raw.reshape(h, w + 1)
    if not rows[:, 0].any():  # every row unfiltered (what write_png_gray produces)
        return rows[:, 1:].copy()
    out = np.zeros((h, w), dtype=np.uint8)
    prev = np.zeros(w, dtype=np.uint8)
    for y in range(h):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum modulo 256
            cur = (np.cumsum(line, dtype=np.uint64) % 256).astype(np.uint8)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average / Paeth: sequential within the row
            cur = np.zeros(w, dtype=np.uint8)
            left, upleft = 0, 0
            for x in range(w):
                up = int(prev[x])
                if kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - upleft
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                left = (int(line[x]) + pred) & 0xFF
                cur[x] = left
                upleft = up
        else:
            raise PngError(f"{where}: row {y} has unknown filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def _read_with_pillow(path: Path, where: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as err:
        raise PngError(f"{where}: not an 8-bit grayscale PNG and Pillow is not installed to convert it") from err
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def read_png_gray(path: str | Path) -> np.ndarray:
    """Decode a PNG file to a uint8 array of shape (H, W).

    Raises:
        PngError: naming the file, for a bad signature, a truncated or corrupt file, or a bad CRC.
    """
    path = Path(path)
    data = path.read_bytes()
    where = str(path)
    if not data.startswith(_SIGNATURE):
        raise PngError(f"{where}: not a PNG file (bad signature)")
    pos, header, idat = len(_SIGNATURE), None, []
    while True:
        if pos + 8 > len(data):
            raise PngError(f"{where}: truncated file (no IEND chunk)")
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PngError(f"{where}: truncated {kind.decode('latin-1')} chunk at byte {pos}")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise PngError(f"{where}: CRC mismatch in {kind.decode('latin-1')} chunk at byte {pos}")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError(f"{where}: no IHDR chunk")
    w, h, depth, color, _, _, interlace = header
    if (depth, color, interlace) != (8, 0, 0):
        return _read_with_pillow(path, where)
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    except zlib.error as err:
        raise PngError(f"{where}: corrupt image data ({err})") from err
    if raw.size != h * (w + 1):
        raise PngError(f"{where}: image data holds {raw.size} bytes, expected {h * (w + 1)} for {w}x{h}")
    return _unfilter(raw, h, w, where)
