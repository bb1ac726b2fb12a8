"""``model.arch: vit``: the efficient ViT as a training model on image tasks, label smoothing, a tiny CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnzoo import tasks
from attnzoo.cli import main as attnzoo_main
from attnzoo.models import ModelConfig, build_model
from attnzoo.models.vit_task import ViTClassifier
from attnzoo.train import load_config
from attnzoo.train.config import TrainConfig

TINY = {"dim": 16, "num_heads": 2, "num_layers": 1, "mlp_dim": 32, "patch_size": 4, "dropout": 0.0}


def _batch(spec: tasks.TaskSpec, b: int = 3) -> dict[str, torch.Tensor]:
    shape = (b, spec.seq_len, spec.num_features) if spec.input_kind == "image" else (b, spec.seq_len)
    return {
        "input_ids": torch.randint(0, 256, shape),
        "mask": torch.ones(b, spec.seq_len, dtype=torch.bool),
        "label": torch.randint(0, spec.num_classes, (b,)),
    }


def test_vit_on_colour_images_with_2d_attention() -> None:
    spec = tasks.get("shapes2d")
    cfg = ModelConfig(
        arch="vit", attention="eva", attention_options={"attn_2d": True, "window_size": 3, "num_landmarks": 4}, **TINY
    )
    model = build_model(spec, cfg)
    assert isinstance(model, ViTClassifier) and (model.length, model.grid) == (64, (8, 8))
    assert model.vit.blocks[0].attn.options.image_height == 8  # the grid reached the 2D mechanism
    batch = _batch(spec)
    logits = model(batch)
    assert logits.shape == (3, 2)
    loss, correct, count = model.loss(logits, batch)
    loss.backward()
    assert int(count) == 3 and 0 <= int(correct) <= 3
    assert model.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    maps = model.attention_maps(batch)
    assert len(maps) == 1 and maps[0].shape == (3, 2, 64, 64)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 64))


def test_images_are_scaled_and_channels_first() -> None:
    spec = tasks.get("shapes2d")
    model = build_model(spec, ModelConfig(arch="vit", **TINY))
    ids = torch.zeros(1, 1024, 3, dtype=torch.long)
    ids[0, 33] = torch.tensor([255, 0, 128])  # pixel (1, 1)
    images = model.images({"input_ids": ids})
    assert images.shape == (1, 3, 32, 32)
    assert images[0, :, 1, 1].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert images[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_grey_pixel_task_with_vit_and_augmentation_only_in_training() -> None:
    spec = tasks.get("image", shift_pixels=True)  # LRA Image: ids = pixel + 1, one grey channel
    model = build_model(spec, ModelConfig(arch="vit", **TINY))
    assert model.vit.patch_embed.proj.in_channels == 1
    ids = torch.full((1, 1024), 1)  # pixel value 0 after the shift
    assert model.images({"input_ids": ids}).eq(-1.0).all()
    cifar = tasks.get("cifar10")
    model = build_model(cifar, ModelConfig(arch="vit", **TINY)).eval()
    batch = _batch(cifar)
    torch.testing.assert_close(model(batch), model(batch))  # eval: no augmentation
    model.train()
    torch.manual_seed(0)
    first = model(batch)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(batch))  # training: random crops and flips


def test_label_smoothing_reaches_the_loss() -> None:
    spec = tasks.get("shapes2d")
    model = build_model(spec, ModelConfig(arch="vit", **TINY))
    batch = _batch(spec)
    logits = torch.randn(3, 4)
    loss, _, _ = model.loss(logits, batch, 0.1)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["label"], label_smoothing=0.1))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        TrainConfig(label_smoothing=1.0).validate()


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"task 'shapes2d' has colour image inputs: set model.arch: vit"):
        build_model(tasks.get("shapes2d"), ModelConfig(**TINY))
    with pytest.raises(ValueError, match=r"model.arch vit needs an image classification task; 'listops-mini'"):
        build_model(tasks.get("listops-mini"), ModelConfig(arch="vit", **TINY))
    with pytest.raises(ValueError, match=r"model.vit_options: unknown field\(s\) \['depth'\]"):
        build_model(tasks.get("shapes2d"), ModelConfig(arch="vit", vit_options={"depth": 3}, **TINY))
    with pytest.raises(ValueError, match=r"model.arch must be one of encoder, vit; got 'cnn'"):
        ModelConfig(arch="cnn").validate()
    with pytest.raises(ValueError, match=r"model.arch vit supports neither init_from nor sequence_parallel > 1"):
        TrainConfig(model=ModelConfig(arch="vit"), sequence_parallel=2).validate()


def test_train_cli_on_shapes2d(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "train",
        "--task",
        "shapes2d",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--train-size",
        "64",
        "--dev-size",
        "16",
        "--test-size",
        "16",
        "--batch-size",
        "8",
        "--model.dim",
        "16",
        "--model.num-layers",
        "1",
        "--model.mlp-dim",
        "32",
        "--log-every",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out-dir",
        str(tmp_path / "run"),
    ]
    assert attnzoo_main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 3 and results["test_examples"] == 16 and 0.0 <= results["accuracy"] <= 1.0
    assert results["images_per_s"] == pytest.approx(3 * 8 / results["train_time_s"])
    assert '"images_per_s"' in capsys.readouterr().out
    from attnzoo.viz.attention_map import attention_maps_from_checkpoint

    maps, info = attention_maps_from_checkpoint(tmp_path / "run" / "best.pt", 2, split="test")
    assert len(maps) == 1 and maps[0].shape == (2, 64, 64) and info["tokens"] == 64  # every patch is real
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 64))
    pytest.importorskip("matplotlib")
    out = tmp_path / "map.png"
    argv = ["attention-map", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--index", "2", "--out", str(out)]
    assert attnzoo_main(argv) == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_shapes2d_config_is_the_documented_cpu_run() -> None:
    """``attnzoo train --task shapes2d`` reads configs/mini/shapes2d.yaml: the run docs/vision.md measures."""
    cfg = load_config(None, {"progress": False}, task="shapes2d")
    assert cfg.task == "shapes2d" and cfg.task_options == {}
    assert (cfg.model.arch, cfg.model.attention, cfg.model.dim, cfg.model.num_heads, cfg.model.num_layers) == (
        "vit",
        "softmax",
        32,
        2,
        2,
    )
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.schedule, cfg.max_time) == (4000, 32, 3e-3, "cosine", 240.0)
    assert cfg.label_smoothing == 0.1 and cfg.weight_decay == 0.05
    model = build_model(tasks.get("shapes2d"), cfg.model)
    assert isinstance(model, ViTClassifier) and model.grid == (8, 8)
    assert sum(p.numel() for p in model.parameters()) == 29_154


def test_adamw_leaves_the_position_embedding_undecayed() -> None:
    """``no_weight_decay()`` of a submodule (the ViT's ``pos_embed``, timm's convention) reaches build_optimizer."""
    from attnzoo.train.optim import build_optimizer, no_weight_decay_names

    model = build_model(tasks.get("shapes2d"), ModelConfig(arch="vit", **TINY))
    (name,) = no_weight_decay_names(model)
    assert name.endswith("pos_embed")
    pos_embed = dict(model.named_parameters())[name]
    assert pos_embed.dim() == 4  # a matrix-shaped parameter: the dim rule alone would decay it
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.05))
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and undecayed["weight_decay"] == 0.0
    assert any(p is pos_embed for p in undecayed["params"]) and not any(p is pos_embed for p in decayed["params"])
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(model.parameters()))
