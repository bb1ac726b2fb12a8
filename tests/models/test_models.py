"""Models: shapes per task kind, masking, causality, pooling, positions, per-layer attention, config errors."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attnzoo.models import (
    CausalLM,
    DualEncoderClassifier,
    ImageClassifier,
    ModelConfig,
    SequenceClassifier,
    build_model,
    count_parameters,
    resize_table,
)
from attnzoo.models.positions import make_positions, sinusoidal_table_2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import toy_tasks

TINY = ModelConfig(dim=16, num_heads=2, num_layers=2, mlp_dim=32, dropout=0.0, attention_dropout=0.0)


def batch_of(name: str, size: int = 3) -> dict[str, torch.Tensor]:
    data = toy_tasks.load_split(name, "dev", size=size)
    return toy_tasks.collate([data[i] for i in range(size)])


@pytest.mark.parametrize(
    ("task", "cls", "shape"),
    [
        ("toy", SequenceClassifier, (3, 2)),
        ("toy-seq", CausalLM, (3, 16, 4)),
        ("toy-image", ImageClassifier, (3, 2)),
        ("toy-pair", DualEncoderClassifier, (3, 2)),
    ],
)
def test_build_model_picks_head_and_shapes(task: str, cls: type, shape: tuple[int, ...]) -> None:
    model = build_model(toy_tasks.get(task), TINY)
    assert type(model) is cls
    batch = batch_of(task)
    out = model(batch)
    assert out.shape == shape
    loss, correct, count = model.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= correct <= count
    assert count_parameters(model) > 0


def test_image_patches_and_2d_positions() -> None:
    cfg = replace(TINY, patch_size=2, positions="learned2d", pooling="cls")
    model = build_model(toy_tasks.get("toy-image"), cfg)
    assert model.encoder.embed.grid == (4, 4) and model.encoder.embed.length == 16
    assert model.encoder.positions.weight.shape == (16, 16)
    maps = model.attention_maps(batch_of("toy-image"))
    assert maps[0].shape == (3, 2, 17, 17)  # 16 patches + CLS


def test_padding_does_not_change_outputs() -> None:
    model = build_model(toy_tasks.get("toy"), TINY).eval()
    batch = batch_of("toy")
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][~other["mask"]] = 3  # garbage in padded positions
    assert torch.allclose(model(batch), model(other), atol=1e-6)


def test_causal_lm_ignores_future_tokens() -> None:
    model = build_model(toy_tasks.get("toy-seq"), replace(TINY, causal=True)).eval()
    batch = batch_of("toy-seq")
    batch["mask"][:] = True
    batch["input_ids"][batch["input_ids"] == 0] = 1
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][:, 10:] = 3 - changed["input_ids"][:, 10:] + 1
    a, b = model(batch), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "mean-all"])
def test_norm_and_pooling_variants(norm: str, pooling: str) -> None:
    model = build_model(toy_tasks.get("toy"), replace(TINY, norm=norm, pooling=pooling, positions="sinusoidal"))
    out = model(batch_of("toy"))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_layer_attention_builds_each_layer() -> None:
    cfg = replace(TINY, layer_attention=[{"name": "softmax"}, {"name": "none"}])
    model = build_model(toy_tasks.get("toy"), cfg)
    names = [type(block.attn).__name__ for block in model.encoder.blocks]
    assert names == ["SoftmaxAttention", "NoAttention"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"attention": "nope"}, "unknown mechanism 'nope'"),
        ({"dim": 15}, "divisible"),
        ({"pooling": "max"}, "model.pooling"),
        ({"positions": "rope"}, "model.positions"),
        ({"layer_attention": [{"name": "softmax"}]}, "layer_attention"),
        ({"dropout": 1.5}, "model.dropout"),
    ],
)
def test_bad_model_config(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(toy_tasks.get("toy"), replace(TINY, **change))


def test_patches_need_an_image_task() -> None:
    with pytest.raises(ValueError, match="image task"):
        build_model(toy_tasks.get("toy"), replace(TINY, patch_size=2))


def test_resize_table_1d_keeps_endpoints_and_2d_repeats() -> None:
    table = torch.randn(8, 4)
    big = resize_table(table, 15)
    assert big.shape == (15, 4)
    assert torch.allclose(big[0], table[0]) and torch.allclose(big[-1], table[-1])
    grid = torch.arange(4.0)[:, None].repeat(1, 2)  # 2x2 grid, dim 2
    up = resize_table(grid, 16, grid=(4, 4), old_grid=(2, 2))
    assert up.reshape(4, 4, 2)[:2, :2, 0].eq(0).all() and up.reshape(4, 4, 2)[2:, 2:, 0].eq(3).all()


def test_positions_kinds() -> None:
    assert sinusoidal_table_2d(4, 4, 8).shape == (16, 8)
    with pytest.raises(ValueError, match="grid"):
        make_positions("learned2d", 10, 8, None)
    x = torch.zeros(1, 5, 8)
    assert torch.equal(make_positions("none", 5, 8)(x), x)
