"""Benchmark models: a Transformer encoder with any registered attention, and the task heads on top.

>>> from attnzoo import tasks
>>> from attnzoo.models import ModelConfig, build_model
>>> model = build_model(tasks.get("listops-mini"), ModelConfig(attention="softmax"))  # doctest: +SKIP
"""

from attnzoo.models.heads import (
    REGRESSION_TOLERANCE,
    CausalLM,
    DualEncoderClassifier,
    ImageClassifier,
    SequenceClassifier,
    TaskModel,
    build_model,
    count_parameters,
)
from attnzoo.models.positions import POSITION_KINDS, resize_table
from attnzoo.models.transformer import (
    CLS_POOLINGS,
    POOLINGS,
    Block,
    Encoder,
    InputEmbedding,
    ModelConfig,
    StackState,
    append_cls_id,
)

__all__ = [
    "CLS_POOLINGS",
    "POOLINGS",
    "POSITION_KINDS",
    "REGRESSION_TOLERANCE",
    "Block",
    "CausalLM",
    "DualEncoderClassifier",
    "Encoder",
    "ImageClassifier",
    "InputEmbedding",
    "ModelConfig",
    "SequenceClassifier",
    "StackState",
    "TaskModel",
    "append_cls_id",
    "build_model",
    "count_parameters",
    "resize_table",
]
