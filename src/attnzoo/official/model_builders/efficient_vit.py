"""``from_official_model("efficient-attention-vit", ...)``: HKUNLP/efficient-attention's ``EfficientTransformer``.

The official ``vit/models/efficient_vit.py`` model (the EVA/LARA seed's ImageNet ViTs, ``evit_*``) is
:class:`attnzoo.models.vit.VisionTransformer`; call the result as ``model(images)`` with
``images (B, in_chans, input_size, input_size)`` -> logits ``(B, num_classes)``.

* ``config``: the official argument fields the model reads: ``num_classes, embed_dim, num_heads,
  input_size, patch_size`` (required), ``depth`` (12), ``in_chans`` (3), ``patchify_stem`` ("default"),
  ``no_pos_emb`` (False), ``qkv_bias`` (True), ``mlp_ratio`` (4), ``use_glu`` (False) (defaults: the
  official ``base_et`` and ``main.py``), plus ``attn_name`` and ``attn_args`` (the attention's official
  CLI arguments, the names ``from_official("efficient-attention", attn_name)`` takes). Dropout and
  drop-path rates are not read: the model is returned in eval mode, where they do nothing.
* Each block's attention is ``from_official("efficient-attention", attn_name, ...)``. The official blocks
  run it on ``[B, h, w, C]`` patch features, so LARA always builds 2D proposals and EVA needs
  ``attn_2d`` (here ``seq_shape = (h, w)`` is passed for them); local and 2D local infer the square grid.
* Attentions the official ViT cannot run are refused: EVA without ``attn_2d`` and LARA's
  ``adaptive-1d`` fail on the 4D input in the official code; scatterbrain without ``attn_2d`` fails there
  too, and its 2D form is not reproduced by attnzoo's ``scatterbrain`` entry. Supported: ``softmax,
  local, eva, lara, performer``.
* Tensor names are the official ones except ``norm_before_pooling.*`` -> ``norm.*`` and each block's
  attention tensors, converted by its ``from_official`` entry (e.g. LARA's generator indices, EVA's RPE
  table); ``qkv_bias=False`` checkpoints get a zero ``qkv.bias``.
* PVTv2 (``vit/models/pvt_legacy.py``) is the ``efficient-attention-pvt`` source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from attnzoo.models.vit import VisionTransformer, ViTConfig
from attnzoo.official.models import register_official_model
from attnzoo.official.registry import from_official, resolve_official
from attnzoo.official.weights import load_converted

__all__ = ["SOURCE", "SUPPORTED_ATTENTIONS", "block_attention_args"]

SOURCE = "efficient-attention-vit"
SUPPORTED_ATTENTIONS = ("softmax", "local", "eva", "lara", "performer")
_REQUIRED = ("num_classes", "embed_dim", "num_heads", "input_size", "patch_size", "attn_name")
_DEFAULTS: dict[str, Any] = {
    "depth": 12,
    "in_chans": 3,
    "patchify_stem": "default",
    "no_pos_emb": False,
    "qkv_bias": True,
    "mlp_ratio": 4,
    "use_glu": False,
    "attn_args": {},
}


def block_attention_args(
    source: str, name: str, given: Mapping[str, Any], qkv_bias: bool, grid: tuple[int, int]
) -> dict[str, Any]:
    """The official attention arguments of one block on a ``grid`` of patches (``seq_shape`` where the 4D
    ``[B, h, w, C]`` input selects 2D); ``source`` names the model in errors.

    Raises:
        ValueError: an attention the official vision models cannot run or attnzoo does not reproduce (named).
    """
    if name not in SUPPORTED_ATTENTIONS:
        raise ValueError(
            f"{source}: attention {name!r} is not supported; supported: {', '.join(SUPPORTED_ATTENTIONS)} "
            "(scatterbrain: the official ViT fails without attn_2d, and its 2D form is not reproduced)"
        )
    args = {**given, "qkv_bias": qkv_bias}
    _, merged = resolve_official("efficient-attention", name, args)
    if name == "eva" and not merged["attn_2d"]:
        raise ValueError(f"{source}: eva needs attn_2d=True (without it the official ViT fails on [B,H,W,C] input)")
    if name == "lara" and merged["proposal_gen"] == "adaptive-1d":
        raise ValueError(f"{source}: lara proposal_gen='adaptive-1d' fails on the official ViT's [B,H,W,C] input")
    if name in ("eva", "lara"):
        args["seq_shape"] = grid
    return args


def _convert(state_dict: Mapping[str, Tensor], name: str, layer_args: dict[str, Any]) -> dict[str, Tensor]:
    """Official ``EfficientTransformer`` tensor names -> :class:`VisionTransformer` names."""
    entry, merged = resolve_official("efficient-attention", name, layer_args)
    out: dict[str, Tensor] = {}
    attention: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[2] == "attn":
            attention.setdefault(parts[1], {})[".".join(parts[3:])] = value
        elif parts[0] == "norm_before_pooling":
            out[".".join(["norm", *parts[1:]])] = value
        else:
            out[key] = value
    for index, tensors in attention.items():
        converted = tensors if entry.convert is None else entry.convert(tensors, merged)
        out.update({f"blocks.{index}.attn.{k}": v for k, v in converted.items()})
    return out


@register_official_model(SOURCE)
def build_efficient_vit(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None) -> nn.Module:
    """The :class:`VisionTransformer` of an official ``EfficientTransformer`` config (weights loaded strictly).

    Raises:
        ValueError: a missing config key (named), an unsupported attention, or weights that do not fit.
    """
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise ValueError(f"{SOURCE} config is missing {', '.join(missing)} (read by the official model)")
    cfg = {**_DEFAULTS, **{key: config[key] for key in (*_REQUIRED, *_DEFAULTS) if key in config}}
    vit = ViTConfig(
        image_size=int(cfg["input_size"]),
        patch_size=int(cfg["patch_size"]),
        in_chans=int(cfg["in_chans"]),
        num_classes=int(cfg["num_classes"]),
        dim=int(cfg["embed_dim"]),
        depth=int(cfg["depth"]),
        num_heads=int(cfg["num_heads"]),
        mlp_ratio=float(cfg["mlp_ratio"]),
        use_glu=bool(cfg["use_glu"]),
        patchify_stem=str(cfg["patchify_stem"]),
        pos_emb=not cfg["no_pos_emb"],
        drop_path_rate=0.0,
        attention=str(cfg["attn_name"]),
    )
    vit.validate()
    name = vit.attention
    layer_args = block_attention_args(SOURCE, name, dict(cfg["attn_args"]), bool(cfg["qkv_bias"]), vit.grid)

    def attention(index: int) -> nn.Module:
        return from_official("efficient-attention", name, dim=vit.dim, num_heads=vit.num_heads, args=layer_args)

    model = VisionTransformer(vit, attention)
    if state_dict is not None:
        load_converted(model, _convert(state_dict, name, layer_args), strict=True)
    return model
