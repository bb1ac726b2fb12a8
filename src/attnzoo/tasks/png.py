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
MAX_PIXELS = 1 << 24  # 4096 x 4096; Path-X images have 128 x 128
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each PNG colour type


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
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as err:
        # Pillow's decoders report damage with any of these (OSError: "image file is truncated", ...)
        raise PngError(f"{where}: Pillow cannot decode it ({type(err).__name__}: {err})") from None


def _chunks(data: bytes, where: str) -> tuple[tuple[int, ...], bytes]:
    """The IHDR fields (w, h, depth, color, compression, filter, interlace) and the joined IDAT data."""
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
            if length != 13:
                raise PngError(f"{where}: IHDR chunk holds {length} bytes, expected 13")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError(f"{where}: no IHDR chunk")
    return header, b"".join(idat)


def read_png_gray(path: str | Path) -> np.ndarray:
    """Decode a PNG file to a uint8 array of shape (H, W); other PNG variants through Pillow (as ``"L"``).

    Before any decoding, the header must describe a non-empty image of at most ``MAX_PIXELS`` pixels
    and, unless interlaced, the image data must inflate to exactly the bytes that header implies.

    Raises:
        PngError: naming the file, for a bad signature, a truncated or corrupt file, a bad CRC, a
            malformed header, an empty or over-large image, or (other PNG variants) any Pillow decode error.
    """
    path = Path(path)
    where = str(path)
    (w, h, depth, color, _, _, interlace), idat = _chunks(path.read_bytes(), where)
    if w == 0 or h == 0 or w * h > MAX_PIXELS:
        raise PngError(f"{where}: image size {w}x{h} is empty or over {MAX_PIXELS} pixels")
    if color not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise PngError(f"{where}: unsupported colour type {color} / bit depth {depth}")
    if interlace:
        return _read_with_pillow(path, where)
    size = h * ((w * depth * _CHANNELS[color] + 7) // 8 + 1)  # filter byte + packed samples per row
    try:  # at most one byte more than the image needs, so a zlib bomb cannot fill the memory
        raw = np.frombuffer(zlib.decompressobj().decompress(idat, size + 1), dtype=np.uint8)
    except zlib.error as err:
        raise PngError(f"{where}: corrupt image data ({err})") from None
    if raw.size != size:
        raise PngError(f"{where}: image data holds {raw.size} bytes, expected {size} for {w}x{h}")
    if (depth, color) != (8, 0):
        return _read_with_pillow(path, where)
    return _unfilter(raw, h, w, where)
