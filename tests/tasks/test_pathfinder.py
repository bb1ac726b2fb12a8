"""Pathfinder: label = connectivity of the two markers, balance, determinism, reference render, file layout."""

from __future__ import annotations

import random

import numpy as np
import pytest

from attnzoo import tasks
from attnzoo.cli import main
from attnzoo.tasks.lra import pathfinder
from attnzoo.tasks.lra.pathfinder_gen import generate_batch, render, segment_patch
from attnzoo.tasks.lra.pathfinder_params import lra_params
from attnzoo.tasks.lra.pathfinder_ref import _pixels, generate_image, render_image
from attnzoo.tasks.png import PngError, encode_png_gray, read_png_gray


def connected(image: np.ndarray, start: tuple[int, int], goal: tuple[int, int], step: int) -> bool:
    """Flood fill over drawn pixels (> 0), moving at most ``step`` pixels in each axis (dashed contours)."""
    drawn = image > 0
    seen = np.zeros_like(drawn)
    seen[start] = True
    frontier = [start]
    while frontier:
        y, x = frontier.pop()
        if (y, x) == goal:
            return True
        ys = slice(max(0, y - step), y + step + 1)
        xs = slice(max(0, x - step), x + step + 1)
        new = np.argwhere(drawn[ys, xs] & ~seen[ys, xs]) + np.array([ys.start, xs.start])
        for ny, nx in new:
            seen[ny, nx] = True
            frontier.append((int(ny), int(nx)))
    return False


@pytest.mark.parametrize("res", [32, 128])
def test_label_is_marker_connectivity(res: int) -> None:
    p = lra_params(res)
    batch = generate_batch(p, 48 if res == 32 else 12, np.random.default_rng(7))
    for img, label, markers in zip(batch.images, batch.labels, batch.markers, strict=True):
        a, b = (tuple(int(v) for v in np.round(m)) for m in markers)
        assert img[a] > 0 and img[b] > 0
        assert connected(img, a, b, p.gap) == bool(label)


def test_reference_generator_labels_too() -> None:
    p = lra_params(32, "easy")
    for seed in range(6):
        rows, label = generate_image(p, random.Random(seed))
        img = np.asarray(rows, dtype=np.uint8)
        assert img.shape == (32, 32) and img.max() == 255 and label in (0, 1)


def test_vectorised_render_matches_reference() -> None:
    p = lra_params(64)
    batch = generate_batch(p, 3, np.random.default_rng(1))
    again = render(p, batch.segments, batch.values, batch.markers)
    np.testing.assert_array_equal(again, batch.images)
    for i in range(3):
        segs = [tuple(s) for s in batch.segments[i] if not np.isnan(s[0])]
        ref = np.asarray(render_image(p, segs, [tuple(m) for m in batch.markers[i]]), dtype=np.uint8)
        assert np.abs(ref.astype(int) - batch.images[i]).max() <= 1  # float32 vs float64 rounding only


@pytest.mark.parametrize(("radius", "length"), [(0.75, 2.0), (1.25, 5.0), (2.0, 0.0), (2.164, 2.0), (4.0, 0.0)])
def test_segment_patch_covers_every_pixel_within_radius(radius: float, length: float) -> None:
    """The patch is tight (ceil(length + 2r + 1/4) + 1 pixels a side): it still holds every pixel the
    per-pixel reference finds within ``radius``, including segments with integer or half-integer ends."""
    rng = np.random.default_rng(0)
    n = 300
    a = 20 + rng.uniform(0, 4, size=(n, 2))
    a[:100] = np.round(a[:100] * 2) / 2  # grid-aligned ends are the boundary cases
    theta = np.concatenate([rng.uniform(-np.pi, np.pi, n - 8), np.arange(8) * np.pi / 4])
    b = a + length * np.stack([np.sin(theta), np.cos(theta)], axis=-1)
    yy, xx, dist2 = segment_patch(a, b, radius, length)
    for i in range(n):
        close = dist2[..., i] < radius * radius
        got = {(int(yy[r, 0, i]), int(xx[0, c, i])) for r, c in zip(*np.nonzero(close), strict=True)}
        want = {(y, x) for y, x, _ in _pixels((*a[i], *b[i]), radius, 64)}
        assert got == want


def test_balance_determinism_and_params() -> None:
    p = lra_params(32)
    assert (p.contour_length, p.distractor_length, p.num_distractors) == (14, 4, 5)
    assert [lra_params(32, d).contour_length for d in ("easy", "intermediate", "hard")] == [6, 9, 14]
    assert lra_params(128).num_distractors == 35 // 4
    images, labels, _ = pathfinder.generate_images(p, 400, seed=0, split="train")
    assert abs(labels.mean() - 0.5) < 0.1  # 4 sigma for 400 fair coin flips
    again, labels2, _ = pathfinder.generate_images(p, 400, seed=0, split="train")
    assert np.array_equal(images, again) and np.array_equal(labels, labels2)
    other, _, _ = pathfinder.generate_images(p, 10, seed=1, split="train")
    assert not np.array_equal(other, images[:10])
    assert (images.reshape(400, -1).max(1) == 255).all() and (images == 0).mean() > 0.5


def test_png_round_trip_and_errors(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(5, 7), dtype=np.uint8)
    data = encode_png_gray(img)
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(read_png_gray(tmp_path / "a.png"), img)
    (tmp_path / "b.png").write_bytes(data[:-20])
    with pytest.raises(PngError, match=r"b\.png: truncated"):
        read_png_gray(tmp_path / "b.png")


def test_files_round_trip_and_malformed(tmp_path) -> None:
    p = lra_params(32)
    out = tmp_path / "pf"
    task = tasks.get_task("pathfinder32")
    task.export(task.options(), "train", 20, 0, out)
    root = out / "curv_contour_length_14" / "train"
    images, labels = pathfinder.read_split(pathfinder.locate(out, "curv_contour_length_14", 32, "train"), "train", 32)
    gen, gen_labels, _ = pathfinder.generate_images(p, 20, 0, "train")
    np.testing.assert_array_equal(images, gen.reshape(20, -1))
    np.testing.assert_array_equal(labels, gen_labels)
    ds = tasks.load_split("pathfinder32", "train", data_dir=root, cache_dir=tmp_path / "c")
    assert len(ds) == 20 and ds[0]["input_ids"].shape == (1024,)
    # LRA's pitfall: black pixels are padding by default; shift_pixels=True keeps them
    assert not ds[0]["mask"].all() and bool((ds[0]["mask"] == (ds[0]["input_ids"] != 0)).all())
    fixed = tasks.load_split("pathfinder32", "train", data_dir=root, cache_dir=tmp_path / "c", shift_pixels=True)
    assert fixed[0]["mask"].all() and int(fixed[0]["input_ids"].min()) >= 1
    (root / "imgs" / "0" / "sample_19.png").write_bytes(encode_png_gray(np.zeros((16, 16), np.uint8)))
    with pytest.raises(ValueError, match=r"sample_19\.png: image is 16x16, expected 32x32"):
        tasks.load_split("pathfinder32", "train", data_dir=root, cache_dir=tmp_path / "c2")
    meta = root / "metadata" / "0.npy"
    meta.write_text(meta.read_text().replace(" 0 1.0 14", " 7 1.0 14", 1))
    with pytest.raises(ValueError, match=r"0\.npy:\d+: label '7' out of range"):
        tasks.load_split("pathfinder32", "train", data_dir=root, cache_dir=tmp_path / "c3")
    meta.write_text("".join(line for line in meta.read_text().splitlines(keepends=True) if " 7 1.0 14" not in line))
    with pytest.raises(ValueError, match=r"metadata/0\.npy: lists 19 images, .*train/split\.json says 20"):
        tasks.load_split("pathfinder32", "train", data_dir=root, cache_dir=tmp_path / "c4")
    assert not list((tmp_path / "c2").rglob("*.npy")) and not list((tmp_path / "c3").rglob("*.npy"))


def _release(root, counts: dict[str, int], empty: tuple[str, int] | None = None) -> list[int]:
    """An LRA-release difficulty folder: batch ``b`` holds ``counts[b]`` 32x32 images, image k of the whole
    release (in numeric batch order) filled with the value k + 1. Returns the values in release order."""
    values, lines = [], {}
    for bid in sorted(counts, key=int):
        lines[bid] = []
        for i in range(counts[bid]):
            path = root / "imgs" / bid / f"sample_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if (bid, i) == empty:
                path.write_bytes(b"")  # LRA's input pipeline drops empty files
            else:
                values.append(len(values) + 1)
                path.write_bytes(encode_png_gray(np.full((32, 32), values[-1], np.uint8)))
            lines[bid].append(f"imgs/{bid} sample_{i}.png {i} {values[-1] % 2} 1.0 14 4 2 1 1 1\n")
    (root / "metadata").mkdir()
    for bid, rows in lines.items():
        (root / "metadata" / f"{bid}.npy").write_text("".join(rows))
    return values


def test_release_layout_splits_80_10_10_in_metadata_order(tmp_path) -> None:
    lra = tmp_path / "lra_release"
    values = _release(lra / "pathfinder32" / "curv_contour_length_14", {"10": 4, "2": 8, "0": 9}, empty=("2", 3))
    assert values == list(range(1, 21))  # batches 0, 2, 10 (numeric order); one empty file skipped
    want = {"train": values[:16], "dev": values[16:18], "test": values[18:]}
    for data_dir in (lra, lra / "pathfinder32", lra / "pathfinder32" / "curv_contour_length_14"):
        for split, expect in want.items():
            ds = tasks.load_split("pathfinder32", split, data_dir=data_dir, cache_dir=tmp_path / "c")
            assert ds.arrays.inputs[:, 0].tolist() == expect and (np.ptp(ds.arrays.inputs, axis=1) == 0).all()
            assert ds.arrays.labels.tolist() == [v % 2 for v in expect]
    with pytest.raises(ValueError, match=r"no Pathfinder files for curv_baseline under .*lra_release"):
        tasks.load_split("pathfinder32", "train", data_dir=lra, cache_dir=tmp_path / "c", difficulty="easy")


def test_generated_layout_loads_back_as_the_generated_splits(tmp_path, monkeypatch) -> None:
    out = tmp_path / "gen"
    assert main(["data", "generate", "pathfinder32", "--out", str(out), "--size", "6", "--seed", "3"]) == 0
    hard = out / "curv_contour_length_14"
    for split in ("train", "dev", "test"):
        images, labels, _ = pathfinder.generate_images(lra_params(32), 6, 3, split)
        for data_dir in (out, hard, hard / split):
            ds = tasks.load_split("pathfinder32", split, data_dir=data_dir, cache_dir=tmp_path / "c")
            np.testing.assert_array_equal(ds.arrays.inputs, images.reshape(6, -1))
            np.testing.assert_array_equal(ds.arrays.labels, labels)
    with pytest.raises(ValueError, match=r"train holds the generated 'train' split of pathfinder32, not 'dev'"):
        tasks.load_split("pathfinder32", "dev", data_dir=hard / "train", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"holds 32x32 images, not 64x64"):
        tasks.load_split("pathfinder64", "dev", data_dir=out, cache_dir=tmp_path / "c")
    # regenerating a smaller split into the same folder leaves no stale metadata behind
    monkeypatch.setattr(pathfinder, "PER_BATCH", 2)  # metadata files of 2 images: 0.npy, 1.npy, 2.npy
    gen = ["data", "generate", "pathfinder32", "--out", str(tmp_path / "one"), "--seed", "3", "--splits", "dev"]
    assert main([*gen, "--size", "5"]) == 0 and main([*gen, "--size", "3", "--overwrite"]) == 0
    assert sorted(f.name for f in (tmp_path / "one" / "curv_contour_length_14" / "dev" / "metadata").iterdir()) == [
        "0.npy",
        "1.npy",
    ]
    ds = tasks.load_split("pathfinder32", "dev", data_dir=tmp_path / "one", cache_dir=tmp_path / "c")
    images, _, _ = pathfinder.generate_images(lra_params(32), 3, 3, "dev")
    np.testing.assert_array_equal(ds.arrays.inputs, images.reshape(3, -1))
    with pytest.raises(ValueError, match=r"generated splits \['dev'\] .* no 'test' split"):
        tasks.load_split("pathfinder32", "test", data_dir=tmp_path / "one", cache_dir=tmp_path / "c")
