"""Colour image tasks (issue 27): shapes2d (frame-colour look-up), CIFAR-10 in colour, ImageFolder, crop/flip."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from attnzoo import tasks
from attnzoo.tasks import images


def _decode_shapes(image: np.ndarray, cell: int = 4) -> tuple[int, list[tuple[int, int, int, bool]]]:
    """A shapes2d image read back independently of the generator: the frame's palette index and every
    square as (row, col, palette index, filled), found from the pixels far from the dark background."""
    nearest = np.abs(images.PALETTE[None, None] - image[:, :, None].astype(np.int64)).max(-1).argmin(-1)  # (S, S)
    bright = image.max(-1) >= 100
    frame = set(nearest[0][bright[0]].tolist()) | set(nearest[:, 0][bright[:, 0]].tolist())
    assert len(frame) == 1 and bright[[0, -1]].all() and bright[:, [0, -1]].all()
    squares = []
    side = image.shape[0] // cell
    for row in range(1, side - 1):
        for col in range(1, side - 1):
            block = (slice(row * cell, (row + 1) * cell), slice(col * cell, (col + 1) * cell))
            if bright[block].any():
                assert len(set(nearest[block][bright[block]].tolist())) == 1  # one colour per square
                squares.append((row, col, int(nearest[block][0, 0]), bool(bright[block].all())))
    return frame.pop(), squares


def test_shapes_hand_checked_example() -> None:
    x, y = images.generate_shapes(images.ShapesOptions(), 6, np.random.default_rng(3))
    assert y.tolist() == [0, 1, 1, 0, 0, 1]
    # image 2, drawn by hand from its pixels: a yellow frame; magenta hollow at cell (4, 3), yellow hollow at
    # (5, 3), red filled at (6, 1), green filled at (6, 5): the yellow square is hollow -> label 1 (hollow)
    image = x[2]
    assert np.abs(image[0, 5].astype(int) - [235, 215, 40]).max() <= 20  # the frame is yellow
    yellow = image[20:24, 12:16]
    assert (yellow[[0, -1]].min(-1) >= 20).all() and (yellow[1:3, 1:3].max(-1) < 40).all()  # border only
    assert (image[24:28, 4:8, 0] >= 210).all() and (image[24:28, 4:8, 1:] <= 60).all()  # a filled red square
    assert _decode_shapes(image) == (3, [(4, 3, 4, False), (5, 3, 3, False), (6, 1, 0, True), (6, 5, 1, True)])


def test_shapes_labels_match_the_pixels_and_are_deterministic() -> None:
    opts = images.ShapesOptions()
    x, y = images.generate_shapes(opts, 64, np.random.default_rng(7))
    assert x.shape == (64, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert 20 <= int(y.sum()) <= 44  # both classes, about evenly
    for image, label in zip(x, y, strict=True):
        frame, squares = _decode_shapes(image)
        assert len(squares) == 4 and len({colour for _, _, colour, _ in squares}) == 4
        assert sum(filled for *_, filled in squares) == 2  # always two filled and two hollow
        (filled,) = [f for _, _, colour, f in squares if colour == frame]
        assert label == (0 if filled else 1)
    x2, y2 = images.generate_shapes(opts, 64, np.random.default_rng(7))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x6, _ = images.generate_shapes(images.ShapesOptions(objects=6, image_size=24), 8, np.random.default_rng(0))
    assert [len(_decode_shapes(image)[1]) for image in x6] == [6] * 8


def test_shapes2d_task_split(tmp_path: Path) -> None:
    spec = tasks.get("shapes2d")
    assert (spec.input_kind, spec.seq_len, spec.num_features, spec.num_classes) == ("image", 1024, 3, 2)
    assert spec.image_shape == (32, 32) and spec.augmentation == "none"
    ds = tasks.load_split("shapes2d", "dev", cache_dir=tmp_path, size=8, seed=1)
    item = ds[0]
    assert item["input_ids"].shape == (1024, 3) and item["mask"].all() and item["label"].dtype == torch.long
    other = tasks.load_split("shapes2d", "test", cache_dir=tmp_path, size=8, seed=1)
    assert not torch.equal(item["input_ids"], other[0]["input_ids"])  # splits are independent streams
    with pytest.raises(ValueError, match="cell must be >= 3 and divide image_size; got image_size 30, cell 4"):
        tasks.get("shapes2d", image_size=30)
    with pytest.raises(ValueError, match=r"objects must be even and in 2 \.\. 6, got 3"):
        tasks.get("shapes2d", objects=3)
    with pytest.raises(ValueError, match=r"objects = 6 squares do not fit the 2 x 2 inner cells of a 4 x 4 grid"):
        tasks.get("shapes2d", image_size=16, objects=6)


def test_crop_flip_moves_and_flips_within_padding() -> None:
    torch.manual_seed(0)
    base = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    batch = base.repeat(64, 1, 1, 1)
    out = images.crop_flip(batch, pad=2)
    assert out.shape == batch.shape
    # every output is a shifted (by at most 2 in each axis) and possibly mirrored copy, zeros where padded
    found_flip = found_shift = False
    for src, img in zip(batch, out, strict=True):
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        views = [
            (flip, top, left)
            for flip in (False, True)
            for top in range(5)
            for left in range(5)
            if torch.equal(img.flip(-1) if flip else img, padded[:, top : top + 8, left : left + 8])
        ]
        assert views, "output is not a padded crop of its input"
        found_flip |= any(f for f, _, _ in views)
        found_shift |= any((t, left) != (2, 2) for _, t, left in views)
    assert found_flip and found_shift
    torch.manual_seed(0)
    assert torch.equal(images.crop_flip(batch, pad=2), out)  # reproducible from the torch seed


def _write_cifar(folder: Path) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": list(range(10))}, protocol=2))
    return data


def test_cifar10_in_colour(tmp_path: Path) -> None:
    data = _write_cifar(tmp_path / "cifar-10-batches-py")
    test = tasks.load_split("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert len(test) == 10 and tasks.get("cifar10").augmentation == "crop-flip"
    # pixel (row 0, col 1) of image 3: channels at offsets 1, 1024 + 1, 2048 + 1 of the CIFAR row
    assert test[3]["input_ids"][1].tolist() == [data[3, 1], data[3, 1025], data[3, 2049]]
    assert int(test[3]["label"]) == 3
    train = tasks.load_split("cifar10", "train", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    dev = tasks.load_split("cifar10", "dev", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert (len(train), len(dev)) == (45, 5)
    assert tasks.get("cifar10", augment=False).augmentation == "none"


def _png_folder(root: Path, classes: dict[str, int]) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                colour = (255, 0, 0) if name == "red" else (0, 0, 255)
                Image.new("RGB", (12 + i, 10), colour).save(root / split / name / f"{i}.png")


def test_image_folder_reads_resizes_and_labels(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    _png_folder(tmp_path / "data", {"blue": 2, "red": 3})
    ds = tasks.load_split(
        "image-folder", "dev", data_dir=tmp_path / "data", cache_dir=tmp_path / "c", image_size=8, num_classes=2
    )
    assert len(ds) == 5 and ds[0]["input_ids"].shape == (64, 3)
    assert [int(ds[i]["label"]) for i in range(5)] == [0, 0, 1, 1, 1]  # sorted class folders: blue, red
    assert ds[0]["input_ids"][0].tolist() == [0, 0, 255] and ds[4]["input_ids"][63].tolist() == [255, 0, 0]
    test = tasks.load_split(
        "image-folder", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "c", image_size=8, num_classes=2
    )
    assert len(test) == 5  # no test/ folder: val/ is the test split


def test_image_folder_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match=r"no train folder: expected .*/train"):
        images.folder_files(tmp_path, "train")
    _png_folder(tmp_path / "data", {"blue": 1, "red": 1})
    opts = images.FolderOptions(image_size=8, num_classes=3)
    with pytest.raises(
        ValueError, match=r"has 2 class folders, num_classes is 3; set --task-options '\{num_classes: 2\}'"
    ):
        images.read_folder(tmp_path / "data", "train", opts)
    (tmp_path / "data" / "val" / "green").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['green'\] that .*train lacks"):
        images.folder_files(tmp_path / "data", "dev")
    (tmp_path / "data" / "train" / "red" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot decode .*0\.png"):
        images.read_folder(tmp_path / "data", "train", images.FolderOptions(image_size=8, num_classes=2))


def test_image_folder_without_pillow_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(ValueError, match="needs Pillow: pip install pillow"):
        images.read_folder(tmp_path, "train", images.FolderOptions(image_size=8, num_classes=2))
