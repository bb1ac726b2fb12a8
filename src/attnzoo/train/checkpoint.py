"""Training checkpoints: which one to resume, every rank's RNG state, and ``--init-from`` at a new length.

A checkpoint (read and written by :mod:`attnzoo.checkpoints`) is a dict of tensors and plain values:
``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``rng`` (one entry per process:
python, numpy, torch, cuda), ``world_size``, ``step``, ``best``, ``best_step``, ``train_time``,
``config`` (nested dict; its ``model`` is the model actually built), ``data_position``
``{"epoch", "batch"}`` and ``meta`` (length, grid, version, the requested model config).
``last.pt`` is rewritten at every evaluation, ``best.pt`` when the dev metric improves.

``init_from`` (the Path-X curriculum, spec diffuser-psf-butterfly-nystrom §4.4) loads a checkpoint
trained at another length into a new model: learned position tables are resized (1D linear, 2D
nearest-neighbour repetition), and attention options tied to the length are adapted first by
:func:`adapt_options`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import attnzoo
from attnzoo.models import resize_table
from attnzoo.train.distributed import DistInfo

__all__ = [
    "RUN_OUTPUTS",
    "adapt_options",
    "capture_rng",
    "find_resume",
    "gather_rng",
    "load_weights_resized",
    "restore_rank_rng",
    "restore_rng",
]


def capture_rng() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "python": [version, torch.tensor(state, dtype=torch.int64), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, py_state, gauss_next = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """Every process's :func:`capture_rng`, in rank order (a collective: call it on every rank)."""
    if not info.enabled:
        return [capture_rng()]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, capture_rng())
    return states


def restore_rank_rng(states: list[dict[str, Any]] | dict[str, Any], info: DistInfo, fallback_seed: int) -> None:
    """Restore this rank's entry of :func:`gather_rng`'s list (a single dict: rank 0's, older checkpoints).

    A rank without an entry (more processes than the checkpoint's run had) seeds torch with
    ``fallback_seed``.
    """
    states = states if isinstance(states, list) else [states]
    if info.rank < len(states):
        restore_rng(states[info.rank])
    else:
        torch.manual_seed(fallback_seed)


RUN_OUTPUTS = ("last.pt", "best.pt", "results.json")  # what --overwrite removes before a fresh run


def find_resume(run_dir: Path, resume: str, *, overwrite: bool = False) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` -> ``run_dir/last.pt`` if present; a path; or ``None``.

    A fresh run (``resume`` empty) refuses a folder that holds ``last.pt`` or ``results.json``, and
    ``"auto"`` refuses a folder with ``results.json`` but no ``last.pt`` (a finished run whose
    checkpoints were deleted), unless ``overwrite``: the caller then removes :data:`RUN_OUTPUTS` and
    starts afresh (``"auto"`` with ``overwrite`` still resumes a ``last.pt`` that is there).

    Raises:
        FileExistsError: ``run_dir`` is a file, or holds a run that would be overwritten (see above).
        FileNotFoundError: an explicit path that does not exist.
    """
    last, results = run_dir / "last.pt", run_dir / "results.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"out_dir {str(run_dir)!r} is a file, not a folder; pass a folder path as --out-dir")
    if resume == "auto" and last.is_file():
        return last
    if resume and resume != "auto":
        if not Path(resume).is_file():
            raise FileNotFoundError(f"--resume checkpoint {resume!r} does not exist")
        return Path(resume)
    if overwrite:
        return None
    if resume == "" and last.is_file():
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint; pass --resume auto to continue it, --overwrite to start "
            "afresh there, or another --out-dir"
        )
    if results.is_file():
        raise FileExistsError(
            f"{run_dir} holds a finished run (results.json) without last.pt to continue from; pass --overwrite "
            "to replace it or another --out-dir"
        )
    return None


def _side(length: int, grid: list[int] | None) -> float:
    return float(grid[0]) if grid else float(length)


def adapt_options(
    name: str,
    new: dict[str, Any],
    old: dict[str, Any],
    old_len: int,
    new_len: int,
    old_grid: list[int] | None,
    new_grid: list[int] | None,
    scaled: list[str],
) -> dict[str, Any]:
    """Attention options for a model initialised from a checkpoint trained at another length.

    Every option the new config leaves at the checkpoint's value (or unset) is adapted: an int equal
    to the old length becomes the new length, and options named in ``scaled`` (e.g. butterfly's
    ``block_size``) are multiplied by the side-length ratio (image side for 2D tasks, else N).
    Options set to a different value in the new config are kept as given.
    """
    fields = {f for f in attnzoo.options(name).__dataclass_fields__}
    ratio = _side(new_len, new_grid) / _side(old_len, old_grid)
    out = dict(new)
    for key, value in old.items():
        if key not in fields or (key in new and new[key] != value):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            if value == old_len:
                out[key] = new_len
            elif key in scaled:
                out[key] = max(1, round(value * ratio))
            else:
                out[key] = value
        else:
            out[key] = value
    return out


def load_weights_resized(model: nn.Module, ckpt: dict[str, Any], new_len: int, new_grid: list[int] | None) -> list[str]:
    """Load ``ckpt["model"]`` into ``model``, resizing tensors whose length changed; returns what was resized.

    Learned position tables (``*positions.weight``) are resized in 1D or 2D; any other tensor whose
    shape differs only along one axis equal to the old length is linearly interpolated along it.

    Raises:
        ValueError: other shape mismatches or missing/unexpected keys (the architectures differ).
    """
    old_len, old_grid = int(ckpt["meta"]["length"]), ckpt["meta"].get("grid")
    target = model.state_dict()
    state, resized = dict(ckpt["model"]), []
    problems = sorted(set(target) ^ set(state))
    if problems:
        raise ValueError(
            f"--init-from: the checkpoint's model differs from this config's (keys: {', '.join(problems[:6])})"
        )
    for key, value in state.items():
        want = target[key].shape
        if value.shape == want:
            continue
        diff = [i for i, (a, b) in enumerate(zip(value.shape, want, strict=True)) if a != b]
        if key.endswith("positions.weight"):
            both_2d = old_grid is not None and new_grid is not None
            state[key] = resize_table(
                value,
                want[0],
                grid=tuple(new_grid) if both_2d else None,  # type: ignore[arg-type]
                old_grid=tuple(old_grid) if both_2d else None,  # type: ignore[arg-type]
            )
        elif len(diff) == 1 and value.shape[diff[0]] == old_len and want[diff[0]] == new_len:
            moved = value.float().movedim(diff[0], -1)
            flat = moved.reshape(1, -1, old_len)
            out = torch.nn.functional.interpolate(flat, size=new_len, mode="linear", align_corners=True)
            state[key] = out.reshape(*moved.shape[:-1], new_len).movedim(-1, diff[0]).to(value.dtype)
        else:
            raise ValueError(f"--init-from: {key} has shape {tuple(value.shape)} in the checkpoint, {tuple(want)} here")
        resized.append(f"{key}: {tuple(value.shape)} -> {tuple(want)}")
    model.load_state_dict(state)
    return resized
