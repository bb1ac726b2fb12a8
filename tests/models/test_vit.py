"""The efficient ViT (attnzoo.models.vit) and its official checkpoints (efficient-attention-vit).

Fixture ``tests/fixtures/efficient_vit/official_evit.pt``: HKUNLP/efficient-attention at 531ff51,
``vit/models/efficient_vit.py`` ``EfficientTransformer(args)`` run on CPU (timm's ``register_model``,
``DropPath``, ``trunc_normal_``, ``to_2tuple`` shimmed), eval mode, fp32: for each case the config (official
fields, ``attn_name``, ``attn_args``), the state_dict (every parameter redrawn at unit scale so each one
moves the logits), ``images (2, 3, 32, 32)`` and ``logits = model(images)`` ``(2, 5)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import attnzoo
from attnzoo.models.vit import DropPath, GatedMLP, VisionTransformer, ViTConfig, grid_attention_options, vit_config

FIXTURE = Path(__file__).parent.parent / "fixtures" / "efficient_vit" / "official_evit.pt"
CASES = torch.load(FIXTURE, weights_only=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_checkpoint_gives_official_logits(case: str) -> None:
    data: dict[str, Any] = CASES[case]
    model = attnzoo.from_official_model("efficient-attention-vit", config=data["config"], state_dict=data["state_dict"])
    with torch.no_grad():
        logits = model(data["images"])
    assert logits.shape == (2, 5)
    err = (logits - data["logits"]).abs().max() / data["logits"].abs().max()
    assert err < 1e-5, f"{case}: relative error {err:.2e}"


def test_official_checkpoint_every_tensor_matters() -> None:
    """A perturbed official position embedding moves the logits (the fixture is not insensitive).

    The change varies over channels: a shift shared by all channels of a token is removed by every LayerNorm.
    """
    data = CASES["eva_2d"]
    state = dict(data["state_dict"])
    state["pos_embed"] = state["pos_embed"] + 0.1 * torch.randn(
        state["pos_embed"].shape, generator=torch.Generator().manual_seed(0)
    )
    model = attnzoo.from_official_model("efficient-attention-vit", config=data["config"], state_dict=state)
    with torch.no_grad():
        assert (model(data["images"]) - data["logits"]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attn_name": "scatterbrain"}, "attention 'scatterbrain' is not supported"),
        ({"attn_name": "eva", "attn_args": {"window_size": 4}}, "eva needs attn_2d=True"),
        ({"attn_name": "lara", "attn_args": {"proposal_gen": "adaptive-1d"}}, "adaptive-1d"),
        ({"attn_name": "local", "attn_args": {"window": 4}}, "unknown argument"),
        ({"patchify_stem": "hmlp", "patch_size": 4}, "needs patch_size 8 or 16"),
    ],
)
def test_official_builder_refuses(change: dict[str, Any], message: str) -> None:
    config = {**CASES["softmax"]["config"], **change}
    with pytest.raises(ValueError, match=message):
        attnzoo.from_official_model("efficient-attention-vit", config=config)


def test_official_builder_names_missing_key() -> None:
    config = {key: value for key, value in CASES["softmax"]["config"].items() if key != "input_size"}
    with pytest.raises(ValueError, match="missing input_size"):
        attnzoo.from_official_model("efficient-attention-vit", config=config)


def test_named_configs_follow_the_official_registry() -> None:
    tiny, small, base = (vit_config(f"evit_{s}_p8") for s in ("tiny", "small", "base"))
    assert (tiny.dim, tiny.num_heads, tiny.patch_size, tiny.depth) == (192, 3, 8, 12)
    assert (small.dim, small.num_heads) == (384, 6)
    assert (base.dim, base.num_heads) == (768, 12)
    assert vit_config("evit_tiny_p16").grid == (14, 14)
    assert vit_config("evit_tiny_p4").grid == (56, 56)
    with pytest.raises(ValueError, match="unknown ViT configuration 'evit_huge'"):
        vit_config("evit_huge")
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        vit_config("evit_cpu", widht=3)


def test_2d_mechanisms_get_the_grid_and_1d_ones_do_not() -> None:
    assert grid_attention_options("eva", {"attn_2d": True}, (4, 8)) == {
        "attn_2d": True,
        "image_height": 4,
        "image_width": 8,
    }
    assert grid_attention_options("local", {"window_size": 4}, (4, 8)) == {"window_size": 4}
    assert grid_attention_options("softmax", {"attn_2d": True}, (4, 8)) == {"attn_2d": True}


@pytest.mark.parametrize(
    ("attention", "options"),
    [
        ("softmax", {}),
        ("eva", {"attn_2d": True, "window_size": 2, "num_landmarks": 4}),
        ("lara", {"attn_2d": True, "num_landmarks": 4}),
        ("local", {"attn_2d": True, "window_size": 2}),
        ("performer", {}),
    ],
)
def test_vit_on_non_square_images_trains(attention: str, options: dict[str, Any]) -> None:
    cfg = ViTConfig(
        image_size=(16, 32), patch_size=4, dim=16, depth=2, num_heads=2, num_classes=3,
        attention=attention, attention_options=options, drop_path_rate=0.1,
    )  # fmt: skip
    model = VisionTransformer(cfg)
    images = torch.randn(2, 3, 16, 32)
    logits = model(images)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert model.pos_embed is not None and model.pos_embed.grad is not None
    assert model.pos_embed.shape == (1, 4, 8, 16)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_2d_attention_sees_vertical_neighbours() -> None:
    """local 2D (sliding, window 2): the patch 2 rows below (8 tokens on) reaches token 0, 3 columns right does not."""
    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=16, patch_size=4, dim=16, depth=1, num_heads=2, num_classes=0, pos_emb=False,
        attention="local", attention_options={"attn_2d": True, "window_size": 2}, drop_path_rate=0.0,
    )  # fmt: skip
    model = VisionTransformer(cfg).eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 16, 16)
    base = attn(x)
    below, right = x.clone(), x.clone()
    below[0, 8] += 1.0  # grid (2, 0)
    right[0, 3] += 1.0  # grid (0, 3)
    assert (attn(below)[0, 0] - base[0, 0]).abs().max() > 1e-4
    assert (attn(right)[0, 0] - base[0, 0]).abs().max() == 0


def test_glu_mlp_width_and_gating() -> None:
    mlp = GatedMLP(dim=12, hidden=48, dropout=0.0, use_glu=True)
    assert mlp.fc1.weight.shape == (64, 12) and mlp.fc2.weight.shape == (12, 32)
    x = torch.randn(3, 12)
    a, b = mlp.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.nn.functional.gelu(a) * b))


def test_drop_path_drops_whole_samples() -> None:
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.ones(1000, 3, 4)
    y = layer(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match=r"DropPath p must be in \[0, 1\), got 1.0"):
        DropPath(1.0)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"vit\.image_size 30x30 is not a multiple of vit\.patch_size 4"):
        VisionTransformer(ViTConfig(image_size=30, patch_size=4))
    with pytest.raises(ValueError, match=r"vit\.patchify_stem must be one of default, conv, hmlp"):
        VisionTransformer(ViTConfig(patchify_stem="deep"))
    model = VisionTransformer(vit_config("evit_cpu", depth=1, num_classes=4))
    with pytest.raises(ValueError, match=r"images must be \(B, C, 32, 32\), got \(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))
