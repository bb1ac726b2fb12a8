"""Task descriptions and the task registry: ``TaskSpec``, ``Task``, ``register``, ``get``, ``available``.

A ``TaskSpec`` says what a model needs to know about a task (length, vocabulary, classes, ...);
a ``Task`` adds how to make its data: a generator for synthetically defined tasks, a loader for the
official files, or both. Options (``seq_len``, ``difficulty``, ...) live in one frozen dataclass per
task family; ``resolve_options`` validates them and names the valid ones on error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SPLITS", "SplitArrays", "Task", "TaskSpec", "available", "get", "get_task", "register", "resolve_options"]

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know about a task; all items of a split are padded to ``seq_len``."""

    name: str
    seq_len: int  # N: padded length of one input
    input_kind: str  # "tokens" | "bytes" | "pixels" | "continuous" | "image" (uint8 (N, C) per pixel)
    vocab_size: int  # embedding rows incl. the padding id (0 for "continuous")
    num_features: int  # F for "continuous" inputs, C (channels) for "image" inputs, else 0
    num_classes: int  # 0 for regression
    target: str  # "class" | "regression" | "sequence" (-100 = ignore)
    paired: bool  # two inputs (retrieval)
    pad_id: int
    metric: str  # "accuracy" | "mse"
    image_shape: tuple[int, int] | None
    description: str
    augmentation: str = "none"  # train-time image augmentation: "none" | "crop-flip" (tasks.images.crop_flip)


@dataclass
class SplitArrays:
    """The tensors of one split as numpy arrays (possibly memory-mapped).

    Shape legend: n examples, N = ``spec.seq_len``, F features.
    ``inputs`` (n, N) integer ids or (n, N, F) float32; ``lengths`` (n,) real tokens per example (a prefix);
    ``labels`` (n,) int64, (n,) float32 or (n, N) int64; ``inputs2``/``lengths2`` for paired tasks.
    """

    inputs: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    inputs2: np.ndarray | None = None
    lengths2: np.ndarray | None = None

    def named(self) -> dict[str, np.ndarray]:
        """The arrays that are present, by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class Task:
    """A registered task: options type, spec builder and data sources.

    ``generate(opts, split, size, seed) -> SplitArrays`` exists for synthetically defined tasks;
    ``sources(opts, data_dir, split) -> list[Path]`` and ``load(opts, data_dir, split) -> SplitArrays``
    for tasks with official files; ``export(opts, split, size, seed, out_dir) -> list[Path]`` writes the
    generated split in the official file layout where one exists.
    """

    name: str
    options_type: type
    describe: Callable[[Any], TaskSpec]
    sizes: Mapping[str, int]
    generate: Callable[[Any, str, int, int], SplitArrays] | None = None
    sources: Callable[[Any, Path, str], list[Path]] | None = None
    load: Callable[[Any, Path, str], SplitArrays] | None = None
    export: Callable[[Any, str, int, int, Path], list[Path]] | None = None
    files_hint: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1
    mask_zero_pixels: Callable[[Any], bool] = lambda opts: False

    def options(self, **overrides: Any) -> Any:
        """The options dataclass with this task's defaults, then ``overrides``, applied and validated."""
        return resolve_options(self.name, self.options_type, {**self.defaults, **overrides})


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to the registry; a duplicate name is an error."""
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered ``Task`` called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get(name: str, **task_options: Any) -> TaskSpec:
    """The ``TaskSpec`` of task ``name`` (with ``task_options`` such as ``seq_len`` applied)."""
    task = get_task(name)
    return task.describe(task.options(**task_options))


def available() -> list[TaskSpec]:
    """Every registered task's default ``TaskSpec``, in registration order."""
    return [get(name) for name in _REGISTRY]


def resolve_options(task: str, options_type: type, values: Mapping[str, Any]) -> Any:
    """Build ``options_type(**values)``; unknown names raise ``ValueError`` listing the valid ones."""
    valid = {f.name for f in dataclasses.fields(options_type)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"task {task!r}: unknown option(s) {unknown}; valid options: {sorted(valid)}")
    return options_type(**{k: v for k, v in values.items() if v is not None})


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of ``SPLITS``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
