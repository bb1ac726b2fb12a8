"""PVTv2 (attnzoo.models.pvt) and its official checkpoints (efficient-attention-pvt).

Fixture ``tests/fixtures/efficient_pvt/official_pvt.pt``: HKUNLP/efficient-attention at 531ff51,
``vit/models/pvt_legacy.py`` ``PyramidVisionTransformerV2(args)`` run on CPU (timm's ``register_model``,
``DropPath``, ``trunc_normal_``, ``to_2tuple``, ``_cfg`` shimmed), eval mode, fp32. Per case: ``base_config``
with ``embed_dims [8, 16, 24, 32]``, ``depths [1, 2, 1, 1]``, ``num_heads [1, 2, 3, 4]``, ``mlp_ratios [2] * 4``,
``sr_ratios [8, 4, 2, 1]``, 64 px images, 5 classes; the attention's official CLI defaults updated with the
case's ``attn_args``; every parameter redrawn (``N(0, 0.5^2)`` for matrices, ``N(0, 0.2^2)`` for vectors) so each
moves the logits; ``images (2, 3, 64, 64)`` and ``logits = model(images)`` ``(2, 5)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import attnzoo
from attnzoo.models.pvt import PVTConfig, PyramidVisionTransformer, pvt_config

FIXTURE = Path(__file__).parent.parent / "fixtures" / "efficient_pvt" / "official_pvt.pt"
CASES = torch.load(FIXTURE, weights_only=False)


def _official(case: str, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    data = CASES[case]
    return attnzoo.from_official_model(
        "efficient-attention-pvt", config=data["config"], state_dict=state_dict or data["state_dict"]
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_checkpoint_gives_official_logits(case: str) -> None:
    data: dict[str, Any] = CASES[case]
    with torch.no_grad():
        logits = _official(case)(data["images"])
    assert logits.shape == (2, 5)
    err = (logits - data["logits"]).abs().max() / data["logits"].abs().max()
    assert err < 1e-5, f"{case}: relative error {err:.2e}"


def test_stages_run_the_official_attentions() -> None:
    """Stages 1-3 (sr_ratio > 1) run the configured attention on their own grid; stage 4 runs softmax."""
    model = _official("eva")
    assert model.cfg.grids == [(16, 16), (8, 8), (4, 4), (2, 2)]
    for stage in (1, 2, 3):
        attn = getattr(model, f"block{stage}")[0].attn
        assert type(attn.options) is attnzoo.get_spec("eva").options
        assert (attn.options.image_height, attn.options.image_width) == model.cfg.grids[stage - 1]
    assert type(model.block4[0].attn) is type(attnzoo.build("softmax", 32, 4))


def test_official_checkpoint_every_stage_matters() -> None:
    """Perturbing one attention tensor of stage 2 moves the logits (the fixture is not insensitive)."""
    data = CASES["eva"]
    state = dict(data["state_dict"])
    key = "block2.1.attn.attn_fn.qkv.weight"
    state[key] = state[key] + 0.1 * torch.randn_like(state[key])
    with torch.no_grad():
        logits = _official("eva", state)(data["images"])
    assert (logits - data["logits"]).abs().max() > 1e-3


def test_native_pvt_trains_with_a_2d_mechanism() -> None:
    cfg = PVTConfig(
        image_size=32,
        num_classes=3,
        embed_dims=(8, 8, 16, 16),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 2, 2),
        mlp_ratios=(2, 2, 2, 2),
        attention="local",
        attention_options={"attn_2d": True, "window_size": 1},
    )
    model = PyramidVisionTransformer(cfg)
    assert cfg.grids == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert model.block1[0].attn.options.image_height == 8 and model.block3[0].attn.options.image_width == 2
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 3)
    logits.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_named_configs_and_errors() -> None:
    medium = pvt_config("pvt_medium2")
    assert (medium.depths, medium.num_heads, medium.embed_dims) == ((3, 4, 18, 3), (2, 4, 10, 16), (64, 128, 320, 512))
    assert pvt_config("pvt_large2").mlp_ratios == (4, 4, 4, 4)
    with pytest.raises(ValueError, match="unknown PVT model 'pvt_huge'; choose from pvt_tiny2"):
        pvt_config("pvt_huge")
    with pytest.raises(ValueError, match=r"PVTConfig.depths needs 4 positive entries, got \(1, 1\)"):
        PVTConfig(depths=(1, 1)).validate()
    with pytest.raises(ValueError, match="must divide by num_heads"):
        PVTConfig(num_heads=(3, 4, 10, 16)).validate()
    config = dict(CASES["softmax"]["config"])
    del config["input_size"]
    with pytest.raises(ValueError, match="efficient-attention-pvt config is missing input_size"):
        attnzoo.from_official_model("efficient-attention-pvt", config=config)
    with pytest.raises(ValueError, match="efficient-attention-pvt: unknown model 'pvt_nano'"):
        attnzoo.from_official_model(
            "efficient-attention-pvt", config={**CASES["softmax"]["config"], "model": "pvt_nano"}
        )
    with pytest.raises(ValueError, match="efficient-attention-pvt: attention 'scatterbrain' is not supported"):
        attnzoo.from_official_model(
            "efficient-attention-pvt", config={**CASES["softmax"]["config"], "attn_name": "scatterbrain"}
        )
