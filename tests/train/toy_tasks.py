"""A stand-in for ``attnzoo.tasks`` with two tiny generated tasks, obeying the tasks contract.

``toy``: 24 tokens from {1, 2, 3} plus padding 0; label 1 if 1s outnumber 2s, else 0 (learnable
in a few dozen steps, even without attention). ``toy-seq``: per-position labels (the token itself,
-100 on padding) for the per-token model. ``toy-image``: 8x8 pixel images, label = whether the
top half is brighter than the bottom half.

``install(monkeypatch)`` swaps it in for one test; ``install_globally()`` for a subprocess.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset

SIZES = {"train": 512, "dev": 128, "test": 128}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    seq_len: int
    input_kind: str
    vocab_size: int
    num_features: int
    num_classes: int
    target: str
    paired: bool
    pad_id: int
    metric: str
    image_shape: tuple[int, int] | None
    description: str


SPECS = {
    "toy": TaskSpec("toy", 24, "tokens", 4, 0, 2, "class", False, 0, "accuracy", None, "majority of 1s vs 2s"),
    "toy-seq": TaskSpec("toy-seq", 16, "tokens", 4, 0, 4, "sequence", False, 0, "accuracy", None, "echo"),
    "toy-image": TaskSpec("toy-image", 64, "pixels", 256, 0, 2, "class", False, 0, "accuracy", (8, 8), "bright half"),
    "toy-pair": TaskSpec("toy-pair", 12, "tokens", 4, 0, 2, "class", True, 0, "accuracy", None, "same majority"),
}


class ToyDataset(Dataset):
    def __init__(self, spec: TaskSpec, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        n = spec.seq_len
        if spec.input_kind == "pixels":
            side = spec.image_shape[0]  # type: ignore[index]
            self.ids = torch.randint(0, 256, (size, n), generator=g)
            img = self.ids.view(size, side, side).float()
            self.labels = (img[:, : side // 2].mean((1, 2)) > img[:, side // 2 :].mean((1, 2))).long()
            self.lengths = torch.full((size,), n)
        else:
            self.ids = torch.randint(1, 4, (size, n), generator=g)
            self.lengths = torch.randint(n // 2, n + 1, (size,), generator=g)
            self.ids[torch.arange(n)[None, :] >= self.lengths[:, None]] = 0
            if spec.target == "sequence":
                self.labels = self.ids.masked_fill(self.ids == 0, -100)
            else:
                self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()
        self.spec = spec
        self.ids2 = self.ids.roll(1, dims=0) if spec.paired else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        mask = torch.arange(self.spec.seq_len) < self.lengths[i]
        item = {"input_ids": self.ids[i].clone(), "mask": mask, "label": self.labels[i].clone()}
        if self.ids2 is not None:
            item["input_ids2"], item["mask2"] = self.ids2[i].clone(), self.ids2[i] != 0
        return item


def available() -> list[TaskSpec]:
    return list(SPECS.values())


def get(name: str, **options: Any) -> TaskSpec:
    if name not in SPECS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(SPECS)}")
    spec = SPECS[name]
    return replace(spec, seq_len=options["seq_len"]) if "seq_len" in options else spec


def load_split(name: str, split: str, *, data_dir=None, cache_dir=None, size=None, seed=0, **options: Any) -> Dataset:
    if data_dir is not None:
        raise FileNotFoundError(f"{data_dir}: the toy tasks have no files")
    offset = {"train": 0, "dev": 1, "test": 2}[split]
    return ToyDataset(get(name, **options), size or SIZES[split], seed * 10 + offset)


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in batch]) for key in batch[0]}


def install(monkeypatch: Any) -> None:
    """Make ``from attnzoo import tasks`` return this module for the current test."""
    import attnzoo

    monkeypatch.setitem(sys.modules, "attnzoo.tasks", sys.modules[__name__])
    monkeypatch.setattr(attnzoo, "tasks", sys.modules[__name__], raising=False)


def install_globally() -> None:
    """Same as :func:`install` for the rest of this process (subprocess runners)."""
    import attnzoo

    sys.modules["attnzoo.tasks"] = sys.modules[__name__]
    attnzoo.tasks = sys.modules[__name__]  # type: ignore[attr-defined]
