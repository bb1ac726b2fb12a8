"""Pathfinder / Path-X: split generation, the official file layout (writer and reader).

Layout (spec 1.5): ``<root>/imgs/<batch>/sample_<i>.png`` and ``<root>/metadata/<batch>.npy``, the
metadata being *text*: one line per image, ``imgs/<batch> sample_<i>.png <index> <label> continuity
contour_length distractor_length paddle_length thickness margin n_paddle_contrasts``. The reader
skips empty PNG files (as LRA's input pipeline does).

Two layouts of a difficulty folder (``curv_contour_length_14`` etc.) are read (``locate``):
- the LRA release: the folder itself holds ``imgs/`` and ``metadata/``; its images, in metadata order
  (batches sorted numerically), are cut 80/10/10 into train/dev/test, as LRA's input pipeline does;
- ``attnzoo data generate``: one official-layout folder per split, ``<folder>/{train,dev,test}/``, each
  with a ``split.json`` marker (task, split, size, seed, resolution, images per metadata file) written
  last; a split is read
  whole, so the loaded splits are the generated ones. A split folder passed on its own gives that
  split only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.io import atomic_write_json, atomic_write_text
from attnzoo.progress import progress
from attnzoo.tasks.lra.pathfinder_gen import generate_batch
from attnzoo.tasks.lra.pathfinder_params import PathfinderParams
from attnzoo.tasks.png import read_png_gray, write_png_gray

__all__ = ["SplitSource", "export_split", "generate_images", "locate", "metadata_files", "read_split", "write_layout"]

CHUNK = 256
PER_BATCH = 1000
SPLIT_RANGE = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}
MARKER = "split.json"


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


def export_split(out: Path, task: str, p: PathfinderParams, split: str, size: int, seed: int) -> list[Path]:
    """Generate ``split`` into ``out/<split>/`` (official layout plus the ``split.json`` marker).

    Returns the metadata files. The marker goes first out and last in, so an interrupted run leaves
    no marker; metadata files of an earlier, larger run in the same folder are removed.
    """
    folder = Path(out) / split
    (folder / MARKER).unlink(missing_ok=True)
    written = write_layout(folder, p, *generate_images(p, size, seed, split))
    for stale in set((folder / "metadata").glob("*.npy")) - set(written):
        stale.unlink()
    files = {f.name: min(PER_BATCH, size - i * PER_BATCH) for i, f in enumerate(written)}
    marker = {"task": task, "split": split, "size": size, "seed": seed, "resolution": p.size, "files": files}
    atomic_write_json(folder / MARKER, marker)
    return written


_MARKER_FIELDS = {"task": str, "split": str, "resolution": int, "files": dict}


def _marker(folder: Path) -> dict[str, Any] | None:
    """The split marker in ``folder``, None if there is none; ValueError naming it if it is malformed."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: unreadable split marker ({type(err).__name__}: {err})") from None
    if not (
        isinstance(marker, dict)
        and all(type(marker.get(key)) is kind for key, kind in _MARKER_FIELDS.items())
        and marker["split"] in SPLIT_RANGE
        and all(type(n) is int and n >= 0 for n in marker["files"].values())
    ):
        raise ValueError(f"{path}: split marker must hold task, split (train/dev/test), resolution and files")
    return marker


@dataclass(frozen=True)
class SplitSource:
    """Where a split's images are: ``folder`` (official layout), read whole or cut 80/10/10 (``whole=False``)."""

    folder: Path
    whole: bool
    counts: dict[str, int] | None = None  # images per metadata file of a generated split, from its marker


def _generated(folder: Path, split: str, resolution: int) -> SplitSource:
    marker = _marker(folder)
    path = folder / MARKER
    if marker is None:
        raise ValueError(f"{path} is missing: the generation was interrupted; run `attnzoo data generate` again")
    if marker["split"] != split:
        raise ValueError(
            f"{path}: {folder} holds the generated {marker['split']!r} split of {marker['task']}, not {split!r}; "
            f"pass its parent {folder.parent} to load every split"
        )
    if marker["resolution"] != resolution:
        res = marker["resolution"]
        raise ValueError(f"{path}: the folder holds {res}x{res} images, not {resolution}x{resolution}")
    return SplitSource(folder, True, marker["files"])


def locate(data_dir: Path, folder_name: str, resolution: int, split: str) -> SplitSource:
    """Find ``split`` of difficulty folder ``folder_name`` in ``data_dir``, in either layout (module docstring).

    ``data_dir`` is the difficulty folder, a folder holding it (``lra_release/pathfinder32``, the
    output of ``attnzoo data generate``), ``lra_release/lra_release``, or one generated split folder.

    Raises:
        ValueError: naming the folders tried, a missing generated split, or a split marker that does
            not match the split or resolution asked for.
    """
    data_dir = Path(data_dir)
    tried = [data_dir, data_dir / folder_name, data_dir / f"pathfinder{resolution}" / folder_name]
    for folder in tried:
        if (folder / MARKER).is_file():
            return _generated(folder, split, resolution)
        splits = [s for s in SPLIT_RANGE if (folder / s / "metadata").is_dir()]
        if splits:
            if split not in splits:
                raise ValueError(
                    f"{folder}: generated splits {splits} but no {split!r} split; "
                    f"generate it with `attnzoo data generate ... --splits {split}`"
                )
            return _generated(folder / split, split, resolution)
        if (folder / "metadata").is_dir():
            return SplitSource(folder, False)
    raise ValueError(
        f"pathfinder: no Pathfinder files for {folder_name} under {data_dir} (looked for metadata/ in "
        f"{', '.join(str(f) for f in tried)}, and for the train/dev/test folders `attnzoo data generate` writes)"
    )


def metadata_files(root: Path) -> list[Path]:
    """The metadata files under ``root/metadata`` sorted by integer stem; ValueError if there are none."""
    folder = Path(root) / "metadata"
    files = sorted(
        folder.glob("*.npy"), key=lambda f: (not f.stem.isdigit(), int(f.stem) if f.stem.isdigit() else 0, f.stem)
    )
    if not files:
        raise ValueError(f"pathfinder: no metadata/*.npy files in {root}")
    return files


def _entries(root: Path, counts: dict[str, int] | None) -> list[tuple[Path, int, str]]:
    """(image path, label, ``metadata-file:line``) of every metadata line, in order.

    ``counts`` (a generated split's marker) must name every metadata file with its number of lines.
    """
    entries = []
    files = metadata_files(root)
    if counts is not None and sorted(counts) != sorted(f.name for f in files):
        names = sorted(f.name for f in files)
        raise ValueError(f"{root / MARKER}: lists metadata files {sorted(counts)}, the folder holds {names}")
    for meta in files:
        try:
            lines = meta.read_bytes().decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError as err:
            raise ValueError(f"{meta}: not valid UTF-8 at byte {err.start} ({err.reason})") from None
        if counts is not None and len(lines) != counts[meta.name]:
            raise ValueError(f"{meta}: lists {len(lines)} images, {root / MARKER} says {counts[meta.name]}")
        for lineno, line in enumerate(lines, start=1):
            cols = line.split(" ")
            if len(cols) < 4:
                raise ValueError(f"{meta}:{lineno}: expected at least 4 space-separated fields, got {len(cols)}")
            if cols[3] not in ("0", "1"):
                raise ValueError(f"{meta}:{lineno}: label {cols[3]!r} out of range (expected 0 or 1)")
            if "\0" in cols[0] + cols[1]:
                raise ValueError(f"{meta}:{lineno}: NUL character in the image path")
            entries.append((Path(root) / cols[0] / cols[1], int(cols[3]), f"{meta}:{lineno}"))
    return entries


def _size(path: Path, origin: str) -> int:
    """The size of the listed image file; ValueError naming it and its metadata line if it is missing."""
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError as err:  # e.g. a name too long for the file system
        raise ValueError(f"{path}: listed in {origin} but cannot be read ({err.strerror})") from None


def read_split(source: SplitSource, split: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, resolution**2) uint8 and labels (n,) of ``split`` from ``source`` (see ``locate``).

    Raises:
        ValueError: naming the file for a missing or undecodable PNG, an image of the wrong size, a
            malformed metadata line, or (generated splits) metadata that disagrees with the marker.
    """
    entries = _entries(source.folder, source.counts)
    entries = [entry for entry in entries if _size(entry[0], entry[2]) != 0]  # LRA drops empty files
    lo, hi = (0.0, 1.0) if source.whole else SPLIT_RANGE[split]
    chosen = entries[round(lo * len(entries)) : round(hi * len(entries))]
    images = np.zeros((len(chosen), resolution * resolution), dtype=np.uint8)
    for i, (path, _, origin) in enumerate(progress(chosen, desc=f"reading {split}")):
        if _size(path, origin) < 0:
            raise ValueError(f"{path}: listed in {origin} but missing")
        img = read_png_gray(path)
        if img.shape != (resolution, resolution):
            raise ValueError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {resolution}x{resolution}")
        images[i] = img.reshape(-1)
    return images, np.asarray([label for _, label, _ in chosen], dtype=np.int64)
