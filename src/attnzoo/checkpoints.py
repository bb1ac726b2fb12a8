"""Reading and writing run checkpoints, below both ``attnzoo.train`` and ``attnzoo.viz``.

A checkpoint (``last.pt`` / ``best.pt`` of ``attnzoo train``) is a dict of tensors and plain values:
``model`` (state dict), ``step``, ``config`` (the run's config as a nested dict, whose ``model`` is the
model config actually built) and ``meta`` (length, grid, version), plus the training state the
trainer adds (optimiser, scheduler, RNG states, data position). It is written atomically and read
back with ``weights_only=True``; :func:`model_from_checkpoint` and :func:`load_run_split` rebuild
the trained model and its data from it without the trainer.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from attnzoo.io import atomic_torch_save
from attnzoo.models import ModelConfig, TaskModel, build_model

__all__ = ["REQUIRED", "load_checkpoint", "load_run_split", "model_from_checkpoint", "save_checkpoint"]

REQUIRED = ("model", "step", "config", "meta")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    atomic_torch_save(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, corrupted or not an attnzoo checkpoint (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError, ValueError, AttributeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {str(path)!r} is corrupted or not a checkpoint: {first}") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is not an attnzoo checkpoint (missing {', '.join(missing)})")
    return state


def model_from_checkpoint(state: Mapping[str, Any]) -> tuple[TaskModel, Any]:
    """The checkpoint's model (its stored model config, weights loaded, in eval mode) and its task spec.

    Raises:
        ValueError: the stored config or weights do not describe a model this version can build.
    """
    from attnzoo import tasks

    config = state["config"]
    try:
        model_cfg = ModelConfig(**config["model"])
    except TypeError as err:
        raise ValueError(f"checkpoint model config is not understood by this version: {err}") from None
    spec = tasks.get(config["task"], **config.get("task_options", {}))
    model = build_model(spec, model_cfg)
    model.load_state_dict(state["model"])
    return model.eval(), spec


def load_run_split(config: Mapping[str, Any], split: str) -> Dataset:
    """Split ``split`` ("train", "dev" or "test") of a run's task, from a run config dict (``TrainConfig.to_dict()``).

    Uses the config's ``data_dir`` (official files) or its generated-data settings (cache, size, data seed).
    """
    from attnzoo import tasks

    return tasks.load_split(
        config["task"],
        split,
        data_dir=config.get("data_dir"),
        cache_dir=config.get("cache_dir"),
        size=config.get(f"{split}_size"),
        seed=config.get("data_seed", 0),
        **config.get("task_options", {}),
    )
