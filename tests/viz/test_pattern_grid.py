"""``attnzoo pattern`` on the 2D grid (issue 27): a 2D mechanism's keys for one query, drawn as the (h, w) grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnzoo.cli import main
from attnzoo.tasks.png import read_png_gray
from attnzoo.viz.pattern import grid_panels, pattern_grid, pattern_panels


def _box(rows: range, cols: range) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=bool)
    mask[rows.start : rows.stop, cols.start : cols.stop] = True
    return mask


def test_local_2d_window_on_the_grid() -> None:
    options = {"attn_2d": True, "window_size": 3}
    assert pattern_grid(64, options) == (8, 8) and pattern_grid(64, {"window_size": 3}) is None
    panels = pattern_panels("local", 64, options, heads=1)
    centre = grid_panels(panels, (8, 8), (4, 4))
    assert centre[0][0] == "local all heads, query (4, 4)"
    assert np.array_equal(centre[0][1] > 0, _box(range(1, 8), range(1, 8)))  # rows/cols within 3 of (4, 4)
    corner = grid_panels(panels, (8, 8), (0, 7))
    assert np.array_equal(corner[0][1] > 0, _box(range(0, 4), range(4, 8)))  # clipped at the border
    with pytest.raises(ValueError, match="--query 8,0 is outside the 8 x 8 grid"):
        grid_panels(panels, (8, 8), (8, 0))
    with pytest.raises(ValueError, match="a 7 x 7 grid does not hold --length 50 tokens"):
        pattern_grid(50, options)
    assert pattern_grid(32, {**options, "image_height": 4, "image_width": 8}) == (4, 8)


def test_cli_draws_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    args = ["pattern", "local", "--length", "64", "--option", "attn_2d=true", "--option", "window_size=3"]
    assert main([*args, "--heads", "1", "--raw", "--query", "0,7", "--out", str(out)]) == 0
    assert "query (0, 7)" in capsys.readouterr().out
    image = read_png_gray(out)  # 8 x 8 cells of 256 // 8 = 32 pixels
    assert image.shape == (256, 256)
    assert np.array_equal(image[::32, ::32] == 0, _box(range(0, 4), range(4, 8)))
