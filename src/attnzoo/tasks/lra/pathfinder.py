"""Pathfinder / Path-X: split generation, the official file layout (writer and reader).

Layout (spec 1.5): ``<root>/imgs/<batch>/sample_<i>.png`` and ``<root>/metadata/<batch>.npy``, the
metadata being *text*: one line per image, ``imgs/<batch> sample_<i>.png <index> <label> continuity
contour_length distractor_length paddle_length thickness margin n_paddle_contrasts``. The reader
skips empty PNG files (as LRA's input pipeline does) and splits the images, in metadata order
(batches sorted numerically), 80/10/10 into train/dev/test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnzoo.io import atomic_write_text
from attnzoo.progress import progress
from attnzoo.tasks.lra.pathfinder_gen import generate_batch
from attnzoo.tasks.lra.pathfinder_params import PathfinderParams
from attnzoo.tasks.png import read_png_gray, write_png_gray

__all__ = ["generate_images", "metadata_files", "read_split", "write_layout"]

CHUNK = 256
PER_BATCH = 1000
SPLIT_RANGE = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}


def generate_images(p: PathfinderParams, size: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` images (size, H, W) uint8, labels (size,) int64 and margins (size,), deterministic in seed/split."""
    images = np.zeros((size, p.size, p.size), dtype=np.uint8)
    labels = np.zeros(size, dtype=np.int64)
    margins = np.zeros(size)
    split_id = list(SPLIT_RANGE).index(split)
    for start in progress(range(0, size, CHUNK), desc=f"pathfinder{p.size} {split}"):
        n = min(CHUNK, size - start)
        batch = generate_batch(p, n, np.random.default_rng([seed, split_id, start // CHUNK]))
        images[start : start + n], labels[start : start + n], margins[start : start + n] = (
            batch.images,
            batch.labels,
            batch.margins,
        )
    return images, labels, margins


def write_layout(
    root: Path, p: PathfinderParams, images: np.ndarray, labels: np.ndarray, margins: np.ndarray
) -> list[Path]:
    """Write images and text metadata in the official layout under ``root``; returns the metadata files."""
    written = []
    for batch in progress(range(0, len(labels), PER_BATCH), desc="writing pngs"):
        bid = batch // PER_BATCH
        lines = []
        for i in range(batch, min(batch + PER_BATCH, len(labels))):
            name = f"sample_{i - batch}.png"
            write_png_gray(root / "imgs" / str(bid) / name, images[i])
            lines.append(
                f"imgs/{bid} {name} {i - batch} {labels[i]} {p.continuity} {p.contour_length} {p.distractor_length} "
                f"{p.paddle_length:g} {p.thickness:g} {margins[i]:g} 1\n"
            )
        atomic_write_text(root / "metadata" / f"{bid}.npy", "".join(lines))
        written.append(root / "metadata" / f"{bid}.npy")
    return written


def metadata_files(root: Path) -> list[Path]:
    """The metadata files under ``root/metadata`` sorted by integer stem; ValueError if there are none."""
    folder = Path(root) / "metadata"
    files = sorted(
        folder.glob("*.npy"), key=lambda f: (not f.stem.isdigit(), int(f.stem) if f.stem.isdigit() else 0, f.stem)
    )
    if not files:
        raise ValueError(f"pathfinder: no metadata/*.npy files in {root}")
    return files


def _entries(root: Path) -> list[tuple[Path, int]]:
    entries = []
    for meta in metadata_files(root):
        for lineno, line in enumerate(meta.read_text(encoding="utf-8").split("\n")[:-1], start=1):
            cols = line.split(" ")
            if len(cols) < 4:
                raise ValueError(f"{meta}:{lineno}: expected at least 4 space-separated fields, got {len(cols)}")
            if cols[3] not in ("0", "1"):
                raise ValueError(f"{meta}:{lineno}: label {cols[3]!r} out of range (expected 0 or 1)")
            entries.append((Path(root) / cols[0] / cols[1], int(cols[3])))
    return entries


def read_split(root: Path, split: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, resolution**2) uint8 and labels (n,) of ``split`` from an official-layout folder.

    Raises:
        ValueError: naming the file for a missing or undecodable PNG, or an image of the wrong size.
    """
    entries = [(path, label) for path, label in _entries(root) if not (path.is_file() and path.stat().st_size == 0)]
    lo, hi = SPLIT_RANGE[split]
    chosen = entries[round(lo * len(entries)) : round(hi * len(entries))]
    images = np.zeros((len(chosen), resolution * resolution), dtype=np.uint8)
    for i, (path, _) in enumerate(progress(chosen, desc=f"reading {split}")):
        if not path.is_file():
            raise ValueError(f"{path}: listed in the metadata but missing")
        img = read_png_gray(path)
        if img.shape != (resolution, resolution):
            raise ValueError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {resolution}x{resolution}")
        images[i] = img.reshape(-1)
    return images, np.asarray([label for _, label in chosen], dtype=np.int64)
