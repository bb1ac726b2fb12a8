"""Task models on top of :class:`Encoder`: classifier, dual encoder, per-token (causal LM) model, image classifier.

Every model maps a collated batch (``tasks.collate``) to outputs with ``forward(batch)`` and scores
them with ``loss(outputs, batch) -> (mean loss, correct, count)``; ``build_model(task_spec, cfg)``
picks the model from the task's ``target``, ``paired`` and ``image_shape``.

Shape legend: B batch, T encoder tokens, D width, C classes, N sequence length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.models.transformer import CLS_POOLINGS, Encoder, ModelConfig, StackState

__all__ = [
    "REGRESSION_TOLERANCE",
    "CausalLM",
    "DualEncoderClassifier",
    "ImageClassifier",
    "SequenceClassifier",
    "TaskModel",
    "build_model",
    "count_parameters",
    "score",
]

REGRESSION_TOLERANCE = 0.04  # PSF-Attn's "accuracy" for regression: |pred - y| < 0.04


def pool(h: Tensor, mask: Tensor, mode: str) -> Tensor:
    """``(B, T, D) -> (B, D)``: CLS token (position 0; "cls", "cls-id"), mean over real tokens, or mean over all T."""
    if mode in CLS_POOLINGS:
        return h[:, 0]
    if mode == "mean-all":
        return h.mean(dim=1)
    weights = mask.to(h.dtype)[..., None]
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """LRA / Nystromformer classifier head ``Linear -> ReLU -> Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class TaskModel(nn.Module):
    """Base class: an :class:`Encoder` plus the loss that matches the task's ``target``."""

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__()
        self.task, self.cfg = task, cfg
        self.encoder = Encoder(task, cfg)
        self.out_dim = task.num_classes if task.target != "regression" else 1
        self.hidden = cfg.head_hidden or cfg.mlp_dim

    def loss(
        self, outputs: Tensor, batch: dict[str, Tensor], label_smoothing: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean loss, number correct, number scored)`` for ``outputs`` of :meth:`forward` (see :func:`score`)."""
        return score(self.task, outputs, batch["label"], label_smoothing)

    @property
    def length(self) -> int:
        """Tokens the encoder reads (the position table's length)."""
        return self.encoder.embed.length

    @property
    def grid(self) -> tuple[int, int] | None:
        """The token grid ``(h, w)`` of an image task, else None."""
        return self.encoder.embed.grid

    def attention_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, T)`` bool: the tokens the attention layers read (a CLS token first where pooling adds one)."""
        return self.encoder.embed_inputs(batch["input_ids"], batch["mask"])[1]

    @torch.no_grad()
    def attention_maps(self, batch: dict[str, Tensor]) -> list[Tensor]:
        """Per-layer dense attention weights ``(B, H, T, T)`` of the (first) input."""
        return self.encoder.attention_maps(batch["input_ids"], batch["mask"])


def score(task: Any, outputs: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean loss, number correct, number scored)`` of ``outputs`` against ``labels`` for ``task``'s target.

    class: cross-entropy (with ``label_smoothing``) on ``(B, C)``; regression: MSE on ``(B,)``, correct
    = within ``REGRESSION_TOLERANCE``; sequence: cross-entropy on ``(B, N, C)`` ignoring label -100.
    """
    if task.target == "regression":
        pred = outputs.float()
        loss = F.mse_loss(pred, labels.float())
        correct = ((pred - labels.float()).abs() < REGRESSION_TOLERANCE).sum()
        return loss, correct, torch.tensor(labels.numel(), device=labels.device)
    logits = outputs.float().reshape(-1, outputs.shape[-1])
    flat = labels.reshape(-1)
    loss = F.cross_entropy(logits, flat, ignore_index=-100, label_smoothing=label_smoothing)
    scored = flat != -100
    correct = ((logits.argmax(-1) == flat) & scored).sum()
    return loss, correct, scored.sum()


class SequenceClassifier(TaskModel):
    """Pooled encoder output to ``(B, C)`` logits (``(B,)`` for regression); LRA ``ModelForSC``."""

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__(task, cfg)
        self.head = mlp_head(cfg.dim, self.hidden, self.out_dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h, mask = self.encoder(batch["input_ids"], batch["mask"])
        out = self.head(pool(h, mask, self.cfg.pooling))
        return out[:, 0] if self.task.target == "regression" else out


class ImageClassifier(SequenceClassifier):
    """Classifier over a pixel sequence or ViT-style patches (``model.patch_size``) with 1D or 2D positions."""

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        if task.image_shape is None:
            raise ValueError(f"ImageClassifier needs an image task; {task.name!r} has no image_shape")
        super().__init__(task, cfg)


class DualEncoderClassifier(TaskModel):
    """Retrieval: one shared encoder pools both documents; head on ``[a, b, a*b, a-b]`` (LRA ``ModelForSCDual``)."""

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__(task, cfg)
        self.head = mlp_head(4 * cfg.dim, self.hidden, self.out_dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        ha, ma = self.encoder(batch["input_ids"], batch["mask"])
        hb, mb = self.encoder(batch["input_ids2"], batch["mask2"])
        a, b = pool(ha, ma, self.cfg.pooling), pool(hb, mb, self.cfg.pooling)
        return self.head(torch.cat([a, b, a * b, a - b], dim=-1))


class CausalLM(TaskModel):
    """Per-position logits ``(B, N, C)`` for "sequence" targets; with ``model.causal`` a causal language model."""

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        if cfg.pooling in CLS_POOLINGS or cfg.patch_size != 1:
            raise ValueError("per-token models need model.pooling != 'cls' (nor 'cls-id') and model.patch_size == 1")
        super().__init__(task, cfg)
        self.lm_head = nn.Linear(cfg.dim, self.out_dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h, _ = self.encoder(batch["input_ids"], batch["mask"])
        return self.lm_head(h)

    def prefill(self, input_ids: Tensor, mask: Tensor | None = None) -> tuple[Tensor, StackState]:
        """Logits ``(B, T, C)`` of a prompt ``input_ids: (B, T)`` (``mask: (B, T)``, True = real) and the state.

        Equal to :meth:`forward` on the prompt; needs ``model.causal``. See :meth:`Encoder.prefill`.
        """
        h, state = self.encoder.prefill(input_ids, mask)
        return self.lm_head(h), state

    def step(self, token_ids: Tensor, state: StackState) -> tuple[Tensor, StackState]:
        """Logits ``(B, 1, C)`` of one more token ``token_ids: (B, 1)`` after ``state``, and the new state.

        Prefill plus steps equal :meth:`forward` over the whole sequence; see :meth:`Encoder.step`.
        """
        h, state = self.encoder.step(token_ids, state)
        return self.lm_head(h), state


def build_model(task: Any, cfg: ModelConfig) -> TaskModel:
    """The model for ``task`` (a ``TaskSpec``): seq2seq, per-token, dual encoder, image or sequence classifier.

    ``cfg.arch == "vit"`` gives :class:`~attnzoo.models.vit_task.ViTClassifier` (image tasks; the same
    ``forward``/``loss``/``length``/``grid``); colour images (``input_kind="image"``) need it.
    """
    if cfg.arch == "vit":
        from attnzoo.models.vit_task import ViTClassifier  # builds on score (defined here)

        return ViTClassifier(task, cfg)  # type: ignore[return-value]
    if task.input_kind == "image":
        raise ValueError(f"task {task.name!r} has colour image inputs: set model.arch: vit (patch tokens)")
    if task.target == "seq2seq":
        from attnzoo.models.seq2seq import Seq2Seq  # seq2seq builds on TaskModel (defined here)

        return Seq2Seq(task, cfg)
    if task.target == "sequence":
        return CausalLM(task, cfg)
    if task.paired:
        return DualEncoderClassifier(task, cfg)
    if task.image_shape is not None and task.input_kind == "pixels":
        return ImageClassifier(task, cfg)
    return SequenceClassifier(task, cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
