"""``from_official_model("solving-lra-pathx", ...)``: the LRA classifier of tsumansapkota/Solving-LRA-PathX.

That ``LRA/code`` is a fork of mlpen/Nystromformer's ``LRA/code`` (``model.py``, ``model_wrapper.py``): the same
``ModelForSC`` / ``ModelForSCDual``, with ``butterfly-<b>`` attention types and three dropouts. So the model
is the ``nystromformer-lra`` one (:mod:`attnzoo.official.model_builders.nystromformer_lra`: weight names,
pooling, head, ``task == "retrieval"`` for the dual model, calls ``model(tokens, mask)`` /
``model(tokens_0, mask_0, tokens_1, mask_1)`` -> logits ``(B, num_classes)``) with these changes:

* ``config`` is the fork's ``run_tasks.py`` ``model_config``; it adds ``embedding_dropout`` (embeddings) and
  ``mlp_dropout`` (inside the MLP) beside ``dropout_prob`` (after the attention and the MLP).
* ``attn_type = "butterfly-<b>"``: as the official ``Model`` does, every layer is built as a
  ``sub_attn_type`` ("softmax") layer, then layer ``l`` runs it on groups of ``butterfly_radix`` tokens at
  stride ``b ** (l mod n_stage)`` (capped, float ``n_stage``: quirk B1), strides taken from
  ``max_seq_len``; here the layer's attention is ``from_official("solving-lra-pathx", "butterfly")``
  (LayerNorm and MLP act per token, so grouping them changes nothing). Inputs shorter than
  ``max_seq_len`` act as if right-padded to it. ``tied_weights`` with butterfly fails in the official
  code (no kernel is built) and is refused here.
* The fork's other attention types (softmax, none, nystrom, linformer, performer, linear, reformer) are
  mlpen's kernels: built as ``nystromformer-lra`` builds them.
* ``seed_model`` and ``pretrained_init`` (initialisation and checkpoint loading) are not read: pass the
  weights as ``state_dict`` (a Path-X curriculum stage: resize the position table with
  :func:`attnzoo.models.resize_table`, ``mode="nearest"``, first).
* Tensor names are those of ``nystromformer-lra``; butterfly layers map
  ``model.transformer_{i}.mha.{W_q,W_k,W_v,ff}.*`` to ``classifier.encoder.blocks.{i}.attn.{qkv,proj}.*``
  (the ``butterfly`` entry's mapping: W_q, W_k, W_v stacked into ``qkv``).
* Padded rows differ from the official's inside the layers (attnzoo zeroes the attention output of padded
  queries; the official attends from them too, and averages all values of a group without real tokens,
  B3); padded tokens are masked keys and zeroed after the final LayerNorm in both, so real rows and the
  logits are the official's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from torch import Tensor, nn

import attnzoo
from attnzoo.official.model_builders.nystromformer_lra import LRAModel
from attnzoo.official.models import from_official_model, register_official_model
from attnzoo.official.registry import resolve_official

__all__ = ["SOURCE"]

SOURCE = "solving-lra-pathx"


def _check(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` selects butterfly layers; raises ``ValueError`` for a missing key or tied butterfly."""
    butterfly = str(config.get("attn_type", "")).startswith("butterfly")
    layer_keys = ("sub_attn_type", "butterfly_radix", "attention_dropout")  # ButterflyTransformer, its softmax
    needed = ("embedding_dropout", "mlp_dropout") + (layer_keys if butterfly else ())
    missing = [key for key in needed if key not in config]
    if missing:
        raise ValueError(f"{SOURCE} config is missing {', '.join(missing)} (read by the official model)")
    if butterfly and config.get("tied_weights"):
        raise ValueError(
            "tied_weights with butterfly attention: the official Model builds no attention kernel then "
            "(it fails at forward); butterfly layers need tied_weights False"
        )
    return butterfly


def _butterfly_layers(model: LRAModel, config: Mapping[str, Any]) -> None:
    """Give every layer of ``model`` (built with ``sub_attn_type``) its butterfly attention, weights kept."""
    encoder = model.classifier.encoder
    cfg = encoder.cfg
    args = {
        "butterfly_radix": config["butterfly_radix"],
        "sub_attn_type": config["sub_attn_type"],
        "attention_dropout": config["attention_dropout"],
    }
    entry, merged = resolve_official(SOURCE, "butterfly", args)
    options = {**entry.options(merged, False), "max_seq_len": int(config["max_seq_len"])}
    del options["stage"]  # the layer index, set per layer by ModelConfig.layer_spec
    cfg.attention, cfg.attention_options = entry.mechanism, options
    for index, block in enumerate(encoder.blocks):
        name, layer_options = cfg.layer_spec(index, encoder.embed.length)
        layer = attnzoo.build(name, cfg.dim, cfg.num_heads, dropout=cfg.attention_dropout, **layer_options)
        layer.load_state_dict(block.attn.state_dict())
        block.attn = layer


@register_official_model(SOURCE)
def build_solving_lra_pathx(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None) -> nn.Module:
    """The attnzoo LRA model of a Solving-LRA-PathX ``run_tasks.py`` ``model_config`` (weights loaded strictly).

    Raises:
        ValueError: a missing config key (named), tied butterfly layers, or weights that do not fit.
    """
    butterfly = _check(config)
    layers_config = {**config, "attn_type": config["sub_attn_type"]} if butterfly else dict(config)
    model = cast(LRAModel, from_official_model("nystromformer-lra", config=layers_config, state_dict=state_dict))
    if butterfly:
        _butterfly_layers(model, config)
    encoder = model.classifier.encoder
    encoder.drop.p = float(config["embedding_dropout"])
    for block in encoder.blocks:
        block.mlp.net[2].p = float(config["mlp_dropout"])  # Linear, GELU, Dropout(mlp_dropout), Linear, Dropout
    return model
