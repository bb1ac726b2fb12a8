"""``from_official_model("efficient-attention-pvt", ...)``: HKUNLP/efficient-attention's ``PyramidVisionTransformerV2``.

The official ``vit/models/pvt_legacy.py`` model (the EVA/LARA seed's PVTv2 runs, ``pvt_medium2``) is
:class:`attnzoo.models.pvt.PyramidVisionTransformer`; call the result as ``model(images)`` with
``images (B, in_chans, input_size, input_size)`` -> logits ``(B, num_classes)``.

* ``config``: ``num_classes``, ``input_size`` and ``attn_name`` (required); ``model`` (one of the official
  ``pvt_tiny2 .. pvt_large2``, which set ``depths`` and ``mlp_ratios``) or the per-stage lists ``depths``,
  ``embed_dims``, ``num_heads``, ``mlp_ratios``, ``sr_ratios`` (default: the official ``base_config`` with
  heads of width 32, ``[64, 128, 320, 512]``, ``[2, 4, 10, 16]``, ``[8, 8, 4, 4]``, ``[8, 4, 2, 1]``);
  ``in_chans`` (3), ``qkv_bias`` (True); ``attn_args`` (the attention's official CLI arguments, as for
  ``efficient-attention-vit``). Dropout and drop-path rates are not read: the model is returned in eval mode.
* The stages with ``sr_ratio > 1`` run ``from_official("efficient-attention", attn_name, ...)`` with that
  stage's grid as ``seq_shape`` (EVA, LARA; the official ``Attention`` also sets LARA's ``kernel_size`` to the
  stage's ratio, an argument LARA never reads); the last stage (``sr_ratio = 1``) runs softmax. The
  attentions the official ViT entry refuses are refused here for the same reasons.
* Tensor names are the official ones except inside each block's attention: ``block{i}.{j}.attn.attn_fn.*``
  -> ``block{i}.{j}.attn.*``, converted by its ``from_official`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from attnzoo.models.pvt import PVT_CONFIGS, PVTConfig, PyramidVisionTransformer
from attnzoo.official.model_builders.efficient_vit import block_attention_args
from attnzoo.official.models import register_official_model
from attnzoo.official.registry import from_official, resolve_official
from attnzoo.official.weights import load_converted

__all__ = ["SOURCE"]

SOURCE = "efficient-attention-pvt"
_REQUIRED = ("num_classes", "input_size", "attn_name")
_BASE: dict[str, Any] = {  # pvt_legacy.base_config, with the *2 models' heads
    "embed_dims": [64, 128, 320, 512],
    "num_heads": [2, 4, 10, 16],
    "mlp_ratios": [8, 8, 4, 4],
    "sr_ratios": [8, 4, 2, 1],
    "depths": [3, 4, 18, 3],
    "in_chans": 3,
    "qkv_bias": True,
    "attn_args": {},
}


def _pvt_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The official fields with their defaults (``model`` first, then the explicit keys).

    Raises:
        ValueError: a missing required key or an unknown ``model`` (named).
    """
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise ValueError(f"{SOURCE} config is missing {', '.join(missing)} (read by the official model)")
    named: dict[str, Any] = {}
    if "model" in config:
        if config["model"] not in PVT_CONFIGS:
            raise ValueError(f"{SOURCE}: unknown model {config['model']!r}; choose from {', '.join(PVT_CONFIGS)}")
        named = {key: list(value) for key, value in PVT_CONFIGS[config["model"]].items()}
    return {**_BASE, **named, **{key: config[key] for key in (*_REQUIRED, *_BASE) if key in config}}


def _stage_args(cfg: Mapping[str, Any], pvt: PVTConfig, stage: int) -> tuple[str, dict[str, Any]]:
    """``(official attention name, its arguments)`` of stage ``stage``'s blocks."""
    grid = pvt.grids[stage]
    if pvt.sr_ratios[stage] == 1:
        return "softmax", {"qkv_bias": bool(cfg["qkv_bias"])}
    name = str(cfg["attn_name"])
    return name, block_attention_args(SOURCE, name, dict(cfg["attn_args"]), bool(cfg["qkv_bias"]), grid)


def _convert(state_dict: Mapping[str, Tensor], stage_args: list[tuple[str, dict[str, Any]]]) -> dict[str, Tensor]:
    """Official ``PyramidVisionTransformerV2`` tensor names -> :class:`PyramidVisionTransformer` names."""
    out: dict[str, Tensor] = {}
    attention: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0].startswith("block") and parts[2:4] == ["attn", "attn_fn"]:
            attention.setdefault((int(parts[0].removeprefix("block")), parts[1]), {})[".".join(parts[4:])] = value
        else:
            out[key] = value
    for (stage, index), tensors in attention.items():
        name, args = stage_args[stage - 1]
        entry, merged = resolve_official("efficient-attention", name, args)
        converted = tensors if entry.convert is None else entry.convert(tensors, merged)
        out.update({f"block{stage}.{index}.attn.{k}": v for k, v in converted.items()})
    return out


@register_official_model(SOURCE)
def build_efficient_pvt(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None) -> nn.Module:
    """The :class:`PyramidVisionTransformer` of an official ``PyramidVisionTransformerV2`` config (weights loaded
    strictly when given).

    Raises:
        ValueError: a missing config key (named), an unsupported attention, or weights that do not fit.
    """
    cfg = _pvt_config(config)
    pvt = PVTConfig(
        image_size=int(cfg["input_size"]),
        in_chans=int(cfg["in_chans"]),
        num_classes=int(cfg["num_classes"]),
        embed_dims=tuple(int(v) for v in cfg["embed_dims"]),
        depths=tuple(int(v) for v in cfg["depths"]),
        num_heads=tuple(int(v) for v in cfg["num_heads"]),
        mlp_ratios=tuple(float(v) for v in cfg["mlp_ratios"]),
        sr_ratios=tuple(int(v) for v in cfg["sr_ratios"]),
        attention=str(cfg["attn_name"]),
    )
    pvt.validate()
    stage_args = [_stage_args(cfg, pvt, stage) for stage in range(len(pvt.depths))]

    def attention(stage: int, grid: tuple[int, int]) -> nn.Module:
        name, args = stage_args[stage]
        dim, heads = pvt.embed_dims[stage], pvt.num_heads[stage]
        return from_official("efficient-attention", name, dim=dim, num_heads=heads, args=args)

    model = PyramidVisionTransformer(pvt, attention)
    if state_dict is not None:
        load_converted(model, _convert(state_dict, stage_args), strict=True)
    return model.eval()
