"""Colour image-classification data: procedural look-up images (shapes2d), CIFAR-10, ImageFolder directories.

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
    "CLASSES",
    "IMAGE_SUFFIXES",
    "PALETTE",
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
    "shape_masks",
]

CLASSES = ("filled", "hollow")  # shapes2d class k: the square of the frame's colour is filled (0) or hollow (1)
# shapes2d object colours (RGB): red, green, blue, yellow, magenta, cyan; drawn with +-20 jitter per channel
PALETTE = np.array(
    [[230, 40, 40], [40, 200, 40], [50, 90, 255], [235, 215, 40], [225, 50, 225], [40, 215, 225]], dtype=np.int64
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_FOLDER_SPLITS = {"train": ("train",), "dev": ("val", "dev", "valid"), "test": ("test", "val")}


@dataclass(frozen=True)
class ShapesOptions:
    """shapes2d: ``image_size`` S, squares drawn in ``cell`` x ``cell`` cells of the S/cell grid (the
    inner cells: the outer ring holds the 1-pixel frame), ``objects`` squares of distinct
    :data:`PALETTE` colours (an even number: half filled, half hollow)."""

    image_size: int = 32
    cell: int = 4
    objects: int = 4

    def __post_init__(self) -> None:
        if self.cell < 3 or self.image_size % self.cell:
            raise ValueError(
                f"shapes2d: cell must be >= 3 and divide image_size; got image_size {self.image_size}, cell {self.cell}"
            )
        if self.objects < 2 or self.objects % 2 or self.objects > len(PALETTE):
            raise ValueError(f"shapes2d: objects must be even and in 2 .. {len(PALETTE)}, got {self.objects}")
        inner = self.image_size // self.cell - 2
        if inner * inner < self.objects:
            raise ValueError(
                f"shapes2d: objects = {self.objects} squares do not fit the {max(inner, 0)} x {max(inner, 0)} inner "
                f"cells of a {self.image_size // self.cell} x {self.image_size // self.cell} grid"
            )


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


def shape_masks(cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(cell, cell)`` masks of shapes2d's filled square and hollow square (its 1-pixel border)."""
    filled = np.ones((cell, cell), dtype=bool)
    hollow = filled.copy()
    hollow[1:-1, 1:-1] = False
    return filled, hollow


def _jitter(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``colour (3,)`` plus a uniform -20..20 per channel, clipped to uint8."""
    return np.clip(colour + rng.integers(-20, 21, size=3), 0, 255).astype(np.uint8)


def generate_shapes(opts: ShapesOptions, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` images ``(n, S, S, 3)`` uint8 and labels ``(n,)``: is the square of the frame's colour filled?

    Each image has a noisy dark background (values 0..39), ``opts.objects`` squares of distinct
    :data:`PALETTE` colours in distinct random cells of the inner ``(S/cell - 2)`` x ``(S/cell - 2)``
    grid (exactly half of them filled, half hollow, in random order) and a 1-pixel frame around the
    image in the colour of one of them. Label 0 (``filled``) or 1 (``hollow``): the shape of the square
    whose colour the frame shows.

    Deciding it needs patches to read each other: a frame patch must find the square of its colour
    anywhere inside and read that patch's shape (or that square must find the frame). Without that,
    nothing is known: every image holds the same number of filled and hollow squares, the frame colour
    alone says nothing about the label, and which colours are filled says nothing without the frame's
    colour, so a sum of per-patch scores (the ``none`` baseline: per-token MLP, mean, linear head)
    stays at chance. Deterministic given ``rng``; each image draws, in order: the square colours, the
    shape order, the cells, the queried square, the colour jitter of every square, then the frame's.
    """
    side, cell, count = opts.image_size, opts.cell, opts.objects
    grid = side // cell
    masks = shape_masks(cell)
    inner = np.asarray([row * grid + col for row in range(1, grid - 1) for col in range(1, grid - 1)])
    images = rng.integers(0, 40, size=(size, side, side, 3), dtype=np.uint8)
    labels = np.empty(size, dtype=np.int64)
    for i in range(size):
        colours = rng.choice(len(PALETTE), size=count, replace=False)
        shapes = rng.permutation(np.repeat(np.arange(len(CLASSES)), count // 2))
        cells = rng.choice(inner, size=count, replace=False)
        queried = int(rng.integers(count))
        labels[i] = shapes[queried]
        for shape, colour, where in zip(shapes, colours, cells, strict=True):
            row, col = divmod(int(where), grid)
            images[i, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell][masks[shape]] = _jitter(
                PALETTE[colour], rng
            )
        frame = _jitter(PALETTE[colours[queried]], rng)
        images[i, [0, -1], :] = frame
        images[i, :, [0, -1]] = frame
    return images, labels


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
