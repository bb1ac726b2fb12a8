"""Colour image-classification data: procedural 2D relations, CIFAR-10 in colour, ImageFolder directories.

Every source gives images as uint8 ``(n, H, W, C)`` and labels ``(n,)`` int64; :func:`image_arrays`
stores them as ``SplitArrays`` with ``inputs (n, H*W, C)`` (one row-major token per pixel, the channels
as its features), which a ``TaskSpec`` with ``input_kind="image"`` describes. :func:`crop_flip` is the
standard CIFAR augmentation (random crop after 4-pixel zero padding, horizontal flip) on a batch, the one
implementation the training models use. Needs only numpy and torch; ImageFolder decoding needs Pillow.

Shape legend: n images, B batch, H x W image, C channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attnzoo.tasks.lra import cifar
from attnzoo.tasks.spec import SplitArrays

__all__ = [
    "IMAGE_SUFFIXES",
    "RELATIONS",
    "CifarColorOptions",
    "FolderOptions",
    "ShapesOptions",
    "crop_flip",
    "folder_classes",
    "folder_files",
    "generate_shapes",
    "image_arrays",
    "read_cifar_color",
    "read_folder",
]

RELATIONS = ("vertical", "horizontal")  # class k: the two red objects are stacked (k = 0) or side by side (k = 1)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_FOLDER_SPLITS = {"train": ("train",), "dev": ("val", "dev", "valid"), "test": ("test", "val")}


@dataclass(frozen=True)
class ShapesOptions:
    """shapes2d: ``image_size`` S, objects drawn in ``cell`` x ``cell`` cells of the S/cell grid, up to
    ``distractors`` green objects per image, the two red objects at most ``max_gap`` cells apart along
    their axis (0: anywhere on the grid)."""

    image_size: int = 32
    cell: int = 4
    distractors: int = 2
    max_gap: int = 0

    def __post_init__(self) -> None:
        if self.cell < 2 or self.image_size % self.cell or self.image_size // self.cell < 3:
            raise ValueError(
                f"shapes2d: cell must be >= 2 and divide image_size into a grid of >= 3 x 3 cells; "
                f"got image_size {self.image_size}, cell {self.cell}"
            )
        if self.max_gap < 0:
            raise ValueError(f"shapes2d: max_gap must be >= 0 (0 = anywhere), got {self.max_gap}")
        if not 0 <= self.distractors <= (self.image_size // self.cell) ** 2 - 2:
            raise ValueError(f"shapes2d: distractors must be in 0 .. cells - 2, got {self.distractors}")


@dataclass(frozen=True)
class CifarColorOptions:
    """``augment``: random 4-pixel-padded crops and horizontal flips of the train images (:func:`crop_flip`)."""

    augment: bool = True


@dataclass(frozen=True)
class FolderOptions:
    """``image_size``: every image is resized to S x S; ``num_classes``: the class folders expected."""

    image_size: int = 32
    num_classes: int = 10
    augment: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.num_classes < 2:
            raise ValueError(
                f"image-folder: image_size must be >= 1 and num_classes >= 2, got {self.image_size}, {self.num_classes}"
            )


def image_arrays(images: np.ndarray, labels: np.ndarray) -> SplitArrays:
    """``images (n, H, W, C)`` uint8 and ``labels (n,)`` as ``SplitArrays`` with ``inputs (n, H*W, C)``."""
    n, height, width, chans = images.shape
    inputs = np.ascontiguousarray(images, dtype=np.uint8).reshape(n, height * width, chans)
    return SplitArrays(inputs, np.full(n, height * width, dtype=np.int32), np.asarray(labels, dtype=np.int64))


def crop_flip(images: Tensor, pad: int = 4) -> Tensor:
    """Random crop of the zero-padded image and random horizontal flip, per image: ``(B, C, H, W)`` -> same.

    Offsets (``0 .. 2 pad`` per axis) and flips (probability 1/2) are drawn from torch's default
    generator on ``images.device``, so a seeded run (and its checkpoint's RNG state) repeats them.
    """
    b, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b, 1), device=images.device)
    left = torch.randint(0, 2 * pad + 1, (b, 1), device=images.device)
    rows = top + torch.arange(height, device=images.device)  # (B, H)
    cols = left + torch.arange(width, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = torch.rand(b, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def _shape_masks(cell: int) -> list[np.ndarray]:
    """Boolean ``(cell, cell)`` masks of a square, a disc and a cross."""
    yy, xx = np.mgrid[:cell, :cell] - (cell - 1) / 2
    arm = cell / 4 + 0.01
    return [np.ones((cell, cell), dtype=bool), yy**2 + xx**2 <= (cell / 2) ** 2, (abs(yy) < arm) | (abs(xx) < arm)]


def _colour(rng: np.random.Generator, channel: int) -> np.ndarray:
    """A saturated colour: ``channel`` in 190..255, the others in 0..70."""
    colour = rng.integers(0, 71, size=3)
    colour[channel] = rng.integers(190, 256)
    return colour.astype(np.uint8)


def generate_shapes(opts: ShapesOptions, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` images ``(n, S, S, 3)`` uint8 and labels ``(n,)``: are the two red objects stacked or side by side?

    Each image has a noisy dark background and, in distinct cells of the ``S/cell`` grid, two red and up
    to ``opts.distractors`` green objects (a square, disc or cross each). Label 0 (``vertical``): the red
    cells are further apart in rows than in columns; 1 (``horizontal``): the reverse (never equal).
    Deciding it compares the rows and columns of two objects anywhere in the image: a row-major 1D
    window sees vertical neighbours only S/cell patches apart, and a sum of independent per-patch
    scores cannot do it (for four cells on a rectangle's corners the two vertical and the two
    horizontal pairs would need the same total with opposite signs), so attention-free models stay low.
    """
    side, cell = opts.image_size, opts.cell
    grid = side // cell
    masks = _shape_masks(cell)
    images = rng.integers(0, 40, size=(size, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, len(RELATIONS), size=size)
    for i in range(size):
        while True:
            first = rng.integers(0, grid, size=2)
            main = int(rng.integers(1, min(opts.max_gap or grid - 1, grid - 1) + 1))
            other = int(rng.integers(-(main - 1), main))
            sign = 1 if rng.random() < 0.5 else -1
            second = first + np.asarray((sign * main, other) if labels[i] == 0 else (other, sign * main))
            if ((second >= 0) & (second < grid)).all():
                break
        free = np.setdiff1d(np.arange(grid * grid), [first[0] * grid + first[1], second[0] * grid + second[1]])
        greens = rng.choice(free, size=int(rng.integers(0, opts.distractors + 1)), replace=False)
        objects = [((int(c) // grid, int(c) % grid), 1) for c in greens] + [(tuple(first), 0), (tuple(second), 0)]
        for (row, col), channel in objects:
            patch = images[i, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            patch[masks[int(rng.integers(3))]] = _colour(rng, channel)
    return images, labels.astype(np.int64)


def read_cifar_color(data_dir: Path, split: str) -> SplitArrays:
    """CIFAR-10 in colour from ``cifar-10-batches-py``: inputs ``(n, 1024, 3)`` uint8, labels ``(n,)``.

    The python-pickle batches are read with :func:`attnzoo.tasks.lra.cifar.load_batch`; the splits are
    LRA's (:func:`attnzoo.tasks.lra.cifar.read_split`: train = first 90 % of the 50,000 training images,
    dev = the last 10 %, test = ``test_batch``).
    """
    images, labels = cifar.read_split(data_dir, split)
    return image_arrays(images.transpose(0, 2, 3, 1), labels)


def _split_folder(data_dir: Path, split: str) -> Path:
    for name in _FOLDER_SPLITS[split]:
        if (Path(data_dir) / name).is_dir():
            return Path(data_dir) / name
    names = " or ".join(f"{data_dir}/{name}" for name in _FOLDER_SPLITS[split])
    raise ValueError(f"image-folder: no {split} folder: expected {names} (class subfolders of images)")


def folder_classes(data_dir: Path) -> list[str]:
    """The class names: the subfolders of ``data_dir/train``, sorted (class id = position)."""
    root = _split_folder(data_dir, "train")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def folder_files(data_dir: Path, split: str) -> list[Path]:
    """Every image file of ``split`` (``train``; ``dev``: ``val``/``dev``/``valid``; ``test``: ``test``, else ``val``).

    Raises:
        ValueError: the split folder is missing, holds a class folder that ``train`` lacks, or no images.
    """
    root, classes = _split_folder(data_dir, split), folder_classes(data_dir)
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise ValueError(f"image-folder: {root} has class folder(s) {extra} that {data_dir}/train lacks")
    files = [f for c in classes if (root / c).is_dir() for f in sorted((root / c).iterdir())]
    files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"image-folder: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {root}")
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    """One image file as ``(size, size, 3)`` uint8 RGB, resized bilinearly (Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"image-folder: decoding {path} needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image-folder: cannot decode {path} ({type(err).__name__}: {err})") from None


def read_folder(data_dir: Path, split: str, opts: FolderOptions) -> SplitArrays:
    """An ImageFolder split: inputs ``(n, S*S, 3)`` uint8 (every image resized to S x S), labels = class ids.

    Raises:
        ValueError: the layout problems of :func:`folder_files`, a number of class folders other than
            ``opts.num_classes``, a file that cannot be decoded, or Pillow missing.
    """
    classes = folder_classes(data_dir)
    if len(classes) != opts.num_classes:
        raise ValueError(
            f"image-folder: {data_dir}/train has {len(classes)} class folders, num_classes is {opts.num_classes}; "
            f"set --task-options '{{num_classes: {len(classes)}}}'"
        )
    files = folder_files(data_dir, split)
    images = np.stack([_decode(f, opts.image_size) for f in files])
    labels = np.asarray([classes.index(f.parent.name) for f in files], dtype=np.int64)
    return image_arrays(images, labels)
