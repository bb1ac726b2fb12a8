"""PyTorch datasets over ``SplitArrays``, ``collate``, length bucketing and the padding helper.

Item ``i`` of a ``TaskDataset`` is a dict: ``input_ids`` LongTensor (N) or FloatTensor (N, F),
``mask`` BoolTensor (N) with True = real token, ``label`` (LongTensor (), FloatTensor () or
LongTensor (N)), and for paired tasks ``input_ids2`` and ``mask2``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from attnzoo.tasks.spec import SplitArrays, TaskSpec

__all__ = ["LengthBucketSampler", "TaskDataset", "collate", "pad_sequences"]


def pad_sequences(
    seqs: Sequence[np.ndarray], seq_len: int, dtype: np.dtype | type = np.int16
) -> tuple[np.ndarray, np.ndarray]:
    """Truncate each 1-D id sequence to ``seq_len`` and right-pad it with 0.

    Returns:
        ``(ids, lengths)``: ids of shape (n, seq_len) and lengths (n,) int32 (after truncation).
    """
    ids = np.zeros((len(seqs), seq_len), dtype=dtype)
    lengths = np.zeros(len(seqs), dtype=np.int32)
    for i, seq in enumerate(seqs):
        n = min(len(seq), seq_len)
        ids[i, :n] = seq[:n]
        lengths[i] = n
    return ids, lengths


class TaskDataset(Dataset):
    """Map-style dataset over one split; arrays may be memory-mapped (rows are copied on access).

    Args:
        arrays: the split's arrays (see ``SplitArrays``).
        spec: the task spec (``seq_len`` must equal the arrays' N).
        mask_zero_pixels: official LRA behaviour for pixel tasks: id 0 (a black pixel) is also
            marked as padding (``mask = ids != 0``). Default: False.
    """

    def __init__(self, arrays: SplitArrays, spec: TaskSpec, *, mask_zero_pixels: bool = False) -> None:
        if arrays.inputs.shape[1] != spec.seq_len:
            raise ValueError(f"{spec.name}: arrays have length {arrays.inputs.shape[1]}, spec says {spec.seq_len}")
        self.arrays = arrays
        self.spec = spec
        self.mask_zero_pixels = mask_zero_pixels
        self._positions = torch.arange(spec.seq_len)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def lengths(self) -> np.ndarray:
        """Real-token count per example, shape (n,) (the longer input for paired tasks)."""
        if self.arrays.lengths2 is None:
            return np.asarray(self.arrays.lengths)
        return np.maximum(np.asarray(self.arrays.lengths), np.asarray(self.arrays.lengths2))

    def _encode(self, ids_row: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.input_kind == "continuous":
            ids = torch.from_numpy(np.array(ids_row, dtype=np.float32))
        else:
            ids = torch.from_numpy(np.array(ids_row, dtype=np.int64))
        mask = self._positions < int(length)
        if self.mask_zero_pixels:
            mask = mask & (ids != 0)
        return ids, mask

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = self.arrays
        ids, mask = self._encode(a.inputs[i], a.lengths[i])
        label = torch.as_tensor(np.array(a.labels[i]))
        label = label.float() if self.spec.target == "regression" else label.long()
        item = {"input_ids": ids, "mask": mask, "label": label}
        if a.inputs2 is not None and a.lengths2 is not None:
            item["input_ids2"], item["mask2"] = self._encode(a.inputs2[i], a.lengths2[i])
        return item


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items into a batch: every value gets a leading batch dimension B."""
    if not batch:
        raise ValueError("collate: empty batch")
    return {key: torch.stack([item[key] for item in batch]) for key in batch[0]}


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of indices with similar lengths (optional; for ``DataLoader(batch_sampler=...)``).

    Indices are shuffled, cut into pools of ``batch_size * pool_batches``, each pool sorted by length
    and cut into batches; the batch order is shuffled again. Deterministic given ``seed`` and epoch.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, *, pool_batches: int = 50, seed: int = 0, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.pool = batch_size * max(1, pool_batches)
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently for ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            for b in range(0, len(pool), self.batch_size):
                chunk = pool[b : b + self.batch_size].tolist()
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        for j in rng.permutation(len(batches)):
            yield batches[j]

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.pool)
        per_pool = self.pool // self.batch_size
        last = len(range(0, rest, self.batch_size)) if not self.drop_last else rest // self.batch_size
        return full * per_pool + last
