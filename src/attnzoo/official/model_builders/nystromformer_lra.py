"""``from_official_model("nystromformer-lra", ...)``: the LRA classifier of mlpen/Nystromformer ``LRA/code``.

``config`` is the official ``model_config`` exactly as ``run_tasks.py`` builds it: the task's ``model``
section of ``lra_config.py``, the attention's ``extra_attn_config``, ``mixed_precision``, ``attn_type``
(e.g. ``"nystrom-64"``, ``"linformer-256"``; softmax, none, nystrom, linformer, performer, linear,
reformer) and ``max_seq_len`` rounded up to a power of two. ``run_tasks.py`` picks ``ModelForSCDual``
for ``--task retrieval``; here an optional key ``task`` (the ``--task`` name) does the same:
``config["task"] == "retrieval"`` builds the dual model. Other keys the official model does not read are
ignored; a key it reads that is missing is a ``ValueError`` naming it.

Call ``model(tokens, mask)`` with ``tokens: (B, N)`` long and ``mask: (B, N)`` bool (True = real token;
the official data uses ``mask = tokens != 0``), ``N <= max_seq_len``; returns the logits
``(B, num_classes)``. The dual model takes ``model(tokens_0, mask_0, tokens_1, mask_1)``. It is
:class:`~attnzoo.models.SequenceClassifier` / :class:`~attnzoo.models.DualEncoderClassifier` (pre-LN
:class:`~attnzoo.models.Encoder`, pooling ``mean-all`` for MEAN or ``cls-id`` for CLS, head
Linear -> ReLU -> Linear) with each layer's attention from ``attnzoo.from_official("nystromformer-lra",
kind)``. Train it with :func:`attnzoo.train.optimizer_for` (``run_tasks.py``'s AdamW and OneCycleLR).

| official tensor | attnzoo tensor |
| --- | --- |
| `model.embeddings.word_embeddings.weight` | `classifier.encoder.embed.proj.weight` |
| `model.embeddings.position_embeddings.weight` | `classifier.encoder.positions.weight` |
| `model.transformer_{i}.norm1.*`, `norm2.*` | `classifier.encoder.blocks.{i}.norm1.*`, `norm2.*` |
| `model.transformer_{i}.mlpblock.0.*`, `mlpblock.3.*` | `classifier.encoder.blocks.{i}.mlp.net.0.*`, `net.3.*` |
| `model.transformer_{i}.mha.*` | `classifier.encoder.blocks.{i}.attn.*` (the layer entry's mapping) |
| `model.transformer.*` (`tied_weights`) | every `classifier.encoder.blocks.{i}.*` (one shared block) |
| `model.norm.*` | `classifier.encoder.norm.*` |
| `seq_classifer.mlpblock.0.*`, `mlpblock.2.*` | `classifier.head.0.*`, `classifier.head.2.*` |

Departures and reproduced quirks:

* MEAN pooling averages all N positions, padding included (zeros after the final LN times the mask);
  CLS pooling reproduces ``append_cls``: id ``vocab_size - 1`` first, the last input token dropped.
* Attention dropout acts only in softmax, as in the official kernels (the others have none; HF's LSH
  dropout is 0 by default): ``structure = "nystromformer-lra"`` builds the other attentions with dropout 0.
* The model is built with ``ModelConfig.structure = "nystromformer-lra"`` (also the ``attnzoo train
  --preset nystromformer`` setting), which gives the two layout rules below and the official init: the
  attention projections ``qkv``/``proj`` keep ``nn.Linear``'s U(+-1/sqrt(fan_in)) init, as ``W_q``, ``W_k``,
  ``W_v`` and ``ff`` (attnzoo's default is N(0, 0.02) with zero bias; it matters for training from scratch,
  not for loaded weights).
* linformer: the official ``E`` is one class-level parameter shared by every layer (N4); the layers'
  ``e_proj`` are tied to one parameter, so training updates it once with the summed gradient (the
  official singleton is also shared across models in a process; here each model has its own).
* reformer: the LSH projections have no bias, so ``qkv.bias`` is zero and frozen (``requires_grad``
  off); the rotations are drawn from the global RNG every forward, as the official
  (``torch.manual_seed`` before a call reproduces an official call seeded the same way).
* none and reformer: official projections the output never reads (none: ``W_q``, ``W_k``; reformer:
  ``W_k`` and the biases) get no gradient there, so AdamW's weight decay skips them; attnzoo's fused
  ``qkv`` holds none's dead rows with a zero gradient, so they decay (outputs and losses are unaffected).
* nystrom and linformer accept ``N < max_seq_len`` (the official needs ``N = max_seq_len``; mlpen's
  ``NystromAttention`` also reads ``seq_len``, which ``run_tasks.py`` never sets: not required here).
* ``mixed_precision``: on CUDA the forward runs under fp16 autocast like the official (the attention
  kernels follow attnzoo's precision rules, not the official's fp32 kernels); on CPU it is fp32.
* ``num_head * head_dim`` must equal ``transformer_dim`` (attnzoo's attention width is the model width).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.models import ModelConfig, TaskModel, build_model
from attnzoo.official.models import register_official_model
from attnzoo.official.registry import OfficialEntry, resolve_official
from attnzoo.official.weights import load_converted
from attnzoo.tasks.spec import TaskSpec

__all__ = ["SOURCE", "LRAModel", "attention_kind", "convert_lra_model"]

SOURCE = "nystromformer-lra"

# official attn_type tests of attention.Attention, in its order: (kind, exact match or prefix)
_KINDS = (
    ("softmax", True),
    ("none", True),
    ("linformer", False),
    ("reformer", False),
    ("nystrom", False),
    ("performer", False),
    ("linear", False),
)
# the keys ModelForSC(Dual), Model, Embeddings, Transformer, Attention and SCHead read
_MODEL_KEYS = (
    "mixed_precision",
    "pooling_mode",
    "vocab_size",
    "num_layers",
    "tied_weights",
    "embedding_dim",
    "transformer_dim",
    "transformer_hidden_dim",
    "max_seq_len",
    "dropout_prob",
    "head_dim",
    "num_head",
    "attn_type",
    "attention_grad_checkpointing",
    "num_classes",
)
# the keys each official kernel reads on top
_KERNEL_KEYS = {
    "softmax": ("attention_dropout",),
    "none": (),
    "nystrom": ("num_landmarks",),
    "linformer": ("linformer_k",),
    "performer": ("rp_dim", "kernel_type"),
    "linear": (),
    "reformer": ("num_hash",),
}
_POOLING = {"MEAN": "mean-all", "CLS": "cls-id"}
_BLOCK_TENSORS = (("norm1", "norm1"), ("norm2", "norm2"), ("mlpblock.0", "mlp.net.0"), ("mlpblock.3", "mlp.net.3"))


def attention_kind(attn_type: str) -> str:
    """The official kernel an ``attn_type`` selects (``"nystrom-64"`` -> ``"nystrom"``), as ``Attention`` does.

    Raises:
        ValueError: an ``attn_type`` the official ``Attention`` has no kernel for.
    """
    for kind, exact in _KINDS:
        if attn_type == kind or (not exact and attn_type.startswith(kind)):
            return kind
    raise ValueError(
        f"attn_type {attn_type!r} selects no attention of {SOURCE}; known: softmax, none, or a name starting "
        "with linformer, reformer, nystrom, performer, linear"
    )


class LRAModel(nn.Module):
    """``ModelForSC`` (``forward(tokens, mask)``) or ``ModelForSCDual`` (two pairs) -> logits ``(B, classes)``.

    Wraps the attnzoo task model ``classifier``; ``mixed_precision`` turns on fp16 autocast on CUDA.
    """

    def __init__(self, classifier: TaskModel, *, mixed_precision: bool) -> None:
        super().__init__()
        self.classifier, self.mixed_precision = classifier, mixed_precision
        self.dual = bool(classifier.task.paired)

    def forward(
        self, tokens: Tensor, mask: Tensor, tokens_1: Tensor | None = None, mask_1: Tensor | None = None
    ) -> Tensor:
        """``tokens (B, N)`` long, ``mask (B, N)`` bool (True = real); dual: also ``tokens_1``, ``mask_1``."""
        pairs = [(tokens, mask)] + ([(tokens_1, mask_1)] if tokens_1 is not None or mask_1 is not None else [])
        if len(pairs) != (2 if self.dual else 1) or any(t is None or m is None for t, m in pairs):
            raise ValueError(
                "the dual (retrieval) model takes tokens_0, mask_0, tokens_1, mask_1"
                if self.dual
                else "the single-input model takes tokens and mask only"
            )
        for _, m in pairs:
            if m.dtype != torch.bool:  # type: ignore[union-attr]
                raise ValueError(f"mask must be bool (True = real token), got {m.dtype}")  # type: ignore[union-attr]
        batch = {"input_ids": tokens, "mask": mask}
        if self.dual:
            batch |= {"input_ids2": tokens_1, "mask2": mask_1}  # type: ignore[dict-item]
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.mixed_precision and tokens.is_cuda):
            return self.classifier(batch)


def _check_config(config: Mapping[str, Any]) -> str:
    """The attention kind; raises ``ValueError`` for a missing key or a value attnzoo cannot build."""
    if "attn_type" not in config:
        raise ValueError(f"{SOURCE} config is missing 'attn_type'")
    kind = attention_kind(str(config["attn_type"]))
    missing = [key for key in (*_MODEL_KEYS, *_KERNEL_KEYS[kind]) if key not in config]
    if missing:
        raise ValueError(f"{SOURCE} config is missing {', '.join(missing)} (read by the official {kind} model)")
    if config["embedding_dim"] != config["transformer_dim"]:
        raise ValueError(
            f"embedding_dim ({config['embedding_dim']}) must equal transformer_dim ({config['transformer_dim']}), "
            "as the official Embeddings asserts"
        )
    if config["num_head"] * config["head_dim"] != config["transformer_dim"]:
        raise ValueError(
            f"num_head * head_dim ({config['num_head']} * {config['head_dim']}) must equal transformer_dim "
            f"({config['transformer_dim']}) here"
        )
    if config["pooling_mode"] not in _POOLING:
        raise ValueError(f"pooling_mode must be one of {', '.join(_POOLING)}, got {config['pooling_mode']!r}")
    return kind


def _layer_entry(config: Mapping[str, Any], kind: str) -> tuple[OfficialEntry, dict[str, Any]]:
    """The ``from_official`` entry of the layers and its arguments taken from ``config`` (those present)."""
    entry, _ = resolve_official(SOURCE, kind)
    return resolve_official(SOURCE, kind, {key: config[key] for key in entry.defaults if key in config})


def convert_lra_model(
    state_dict: Mapping[str, Tensor], config: Mapping[str, Any], entry: OfficialEntry, args: dict[str, Any]
) -> dict[str, Tensor]:
    """Official ``ModelForSC(Dual).state_dict()`` to :class:`LRAModel` names (table in the module docstring).

    ``entry``/``args``: the layers' ``from_official`` entry and its merged arguments.

    Raises:
        ValueError: a missing or unexpected official tensor, or linformer layers whose ``E`` differ (named).
    """
    layers = int(config["num_layers"])
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in state_dict:
            raise ValueError(f"official {SOURCE} state dict is missing {name}")
        used.add(name)
        return state_dict[name]

    out = {
        "classifier.encoder.embed.proj.weight": take("model.embeddings.word_embeddings.weight"),
        "classifier.encoder.positions.weight": take("model.embeddings.position_embeddings.weight"),
        "classifier.encoder.norm.weight": take("model.norm.weight"),
        "classifier.encoder.norm.bias": take("model.norm.bias"),
    }
    for i in range(layers):
        official = "model.transformer." if config["tied_weights"] else f"model.transformer_{i}."
        ours = f"classifier.encoder.blocks.{i}."
        for name, mapped in _BLOCK_TENSORS:
            for kind in ("weight", "bias"):
                out[f"{ours}{mapped}.{kind}"] = take(f"{official}{name}.{kind}")
        attention = {k.removeprefix(official + "mha."): take(k) for k in state_dict if k.startswith(official + "mha.")}
        out |= {f"{ours}attn.{k}": v for k, v in entry.convert(attention, args).items()}  # type: ignore[misc]
    for i, kind in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")):
        out[f"classifier.head.{i}.{kind}"] = take(f"seq_classifer.mlpblock.{i}.{kind}")
    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        raise ValueError(f"unexpected tensors in the official {SOURCE} state dict: {', '.join(unexpected)}")
    shared = [v for k, v in out.items() if k.endswith("attn.e_proj")]
    if any(not torch.equal(shared[0], e) for e in shared[1:]):
        raise ValueError("the linformer layers' attn.E differ; the official E is one tensor shared by every layer")
    return out


@register_official_model(SOURCE)
def build_nystromformer_lra(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None) -> nn.Module:
    """:class:`LRAModel` for an official ``run_tasks.py`` ``model_config`` (weights loaded strictly when given)."""
    kind = _check_config(config)
    entry, args = _layer_entry(config, kind)
    dual = config.get("task") == "retrieval"
    cfg = ModelConfig(
        attention=entry.mechanism,
        attention_options=entry.options(args, False),
        dim=int(config["transformer_dim"]),
        num_heads=int(config["num_head"]),
        num_layers=int(config["num_layers"]),
        mlp_dim=int(config["transformer_hidden_dim"]),
        head_hidden=int(config["transformer_hidden_dim"]),
        dropout=float(config["dropout_prob"]),
        attention_dropout=float(config["attention_dropout"]) if kind == "softmax" else 0.0,
        norm="pre",
        pooling=_POOLING[config["pooling_mode"]],
        positions="learned",
        structure="nystromformer-lra",
    )
    task = TaskSpec(
        name=f"{SOURCE}-{'retrieval' if dual else 'classifier'}",
        seq_len=int(config["max_seq_len"]),
        input_kind="tokens",
        vocab_size=int(config["vocab_size"]),
        num_features=0,
        num_classes=int(config["num_classes"]),
        target="class",
        paired=dual,
        pad_id=0,
        metric="accuracy",
        image_shape=None,
        description=f"mlpen/Nystromformer LRA {'ModelForSCDual' if dual else 'ModelForSC'}",
    )
    classifier = build_model(task, cfg)
    blocks = classifier.encoder.blocks
    if config["tied_weights"]:
        classifier.encoder.blocks = nn.ModuleList([blocks[0]] * len(blocks))
    model = LRAModel(classifier, mixed_precision=bool(config["mixed_precision"]))
    if state_dict is not None:
        load_converted(model, convert_lra_model(state_dict, config, entry, args), strict=True)
    return model
