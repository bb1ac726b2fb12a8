"""``attnzoo bench`` 2D settings (issue 27): square patch grids for local / EVA / LARA, the ``grid2d`` preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo.bench.settings import PRESETS, bench_options, case_options
from attnzoo.cli import main


@pytest.mark.parametrize("name", ["local", "eva", "lara"])
def test_grid_preset_gives_2d_options_on_each_square_grid(name: str) -> None:
    preset = PRESETS["grid2d"]
    assert preset.lengths == (196, 784, 3136) and preset.grid_2d
    options = bench_options(name, grid_2d=True)
    assert options["attn_2d"] is True and bench_options(name).get("attn_2d") is not True  # 1D outside the preset
    for n, side in zip(preset.lengths, (14, 28, 56), strict=True):
        case = case_options(name, options, n)
        assert (case["image_height"], case["image_width"]) == (side, side)
    case = case_options(name, options, 196)
    module = attnzoo.build(name, 16, 2, **case)
    x = torch.randn(1, 196, 16)
    assert module(x).shape == (1, 196, 16)
    flops = attnzoo.get_spec(name).flops(196, 8, attnzoo.options(name)(**case), False)
    assert 0 < flops < attnzoo.get_spec("softmax").flops(3136, 8, attnzoo.options("softmax")(), False)


def test_explicit_grid_wins_and_non_square_lengths_are_refused() -> None:
    options = {"attn_2d": True, "image_height": 7, "image_width": 28}
    assert case_options("eva", options, 196)["image_width"] == 28
    with pytest.raises(ValueError, match="length 200 is not a square"):
        case_options("eva", {"attn_2d": True}, 200)
    assert "image_height" not in case_options("eva", {"window_size": 4}, 200)  # 1D: no grid


def test_tiny_grid_sweep_records_flops(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["bench", "--preset", "grid2d", "--mechanisms", "softmax", "eva", "--lengths", "16", "64"]
    args += ["--shapes", "1x1x8", "--repeats", "1", "--no-errors", "--forward-only", "--no-memory"]
    args += ["--option", "eva.window_size=3", "--option", "eva.num_landmarks=4", "--out-dir", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    eva = [r for r in records if r["kind"] == "time" and r["mechanism"] == "eva"]
    assert [r["status"] for r in eva] == ["ok", "ok"]
    assert [(r["options"]["image_height"], r["options"]["attn_2d"]) for r in eva] == [(4, True), (8, True)]
    assert all(r["flops"] > 0 for r in eva)
