"""Long-range tasks and data: LRA (ListOps, Text, Retrieval, Image, Pathfinder, Path-X) and synthetic tasks.

Public API (used by the training harness)::

    tasks.available() -> list[TaskSpec]
    tasks.get(name, **options) -> TaskSpec
    tasks.load_split(name, split, *, data_dir=None, cache_dir=None, size=None, seed=0, **options) -> Dataset
    tasks.collate(batch) -> dict[str, Tensor]

Imports only torch and numpy (not the attention modules). See ``docs/tasks.md``.
"""

from __future__ import annotations

from attnzoo.tasks import catalog as _catalog  # noqa: F401  (registers the tasks)
from attnzoo.tasks.api import load_split
from attnzoo.tasks.dataset import LengthBucketSampler, TaskDataset, collate
from attnzoo.tasks.spec import SPLITS, SplitArrays, Task, TaskSpec, available, get, get_task

__all__ = [
    "SPLITS",
    "LengthBucketSampler",
    "SplitArrays",
    "Task",
    "TaskDataset",
    "TaskSpec",
    "available",
    "collate",
    "get",
    "get_task",
    "load_split",
]
