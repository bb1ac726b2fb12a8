"""``load_split``: generate or read a split, cache it as memory-mapped ``.npy``, wrap it in a Dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from attnzoo.tasks.cache import default_cache_dir, entry_key, read_entry, source_hash, write_entry
from attnzoo.tasks.dataset import TaskDataset
from attnzoo.tasks.spec import check_split, get_task

__all__ = ["load_split"]


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    size: int | None = None,
    seed: int = 0,
    **task_options: Any,
) -> TaskDataset:
    """One split of task ``name`` as a Dataset of dicts (input_ids, mask, label; input_ids2, mask2 if paired).

    Args:
        name: a registered task (see ``available()``).
        split: ``"train"``, ``"dev"`` or ``"test"``.
        data_dir: folder with the official files; None generates synthetically defined tasks.
        cache_dir: cache root; default ``$ATTNZOO_CACHE`` or ``~/.cache/attnzoo``.
        size: examples to generate (task default when None); ignored for official files.
        seed: generator seed (splits use independent streams derived from it).
        task_options: task options such as ``seq_len`` or ``difficulty``.

    Returns:
        A ``TaskDataset`` (items padded to ``spec.seq_len``; ``dataset.spec`` is the resolved spec).

    Raises:
        ValueError: unknown task/split/option, a task that needs official files without ``data_dir``,
            or malformed files (the message names the file and line or entry).
    """
    check_split(split)
    task = get_task(name)
    opts = task.options(**task_options)
    spec = task.describe(opts)
    fields: dict[str, Any] = {
        "task": name,
        "version": task.version,
        "split": split,
        "options": dataclasses.asdict(opts),
    }
    if data_dir is None:
        if task.generate is None:
            raise ValueError(f"task {name!r} cannot be generated; pass data_dir ({task.files_hint})")
        n = int(size if size is not None else task.sizes[split])
        if n < 1:
            raise ValueError(f"size must be >= 1, got {n}")
        fields.update(size=n, seed=seed)
        sources, src_hash = [], entry_key(fields)
    else:
        if task.load is None or task.sources is None:
            raise ValueError(f"task {name!r} has no official files to load; call load_split without data_dir")
        fields["data_dir"] = str(Path(data_dir).resolve())
        sources = task.sources(opts, Path(data_dir), split)
        src_hash = source_hash(sources)
    folder = Path(cache_dir or default_cache_dir()) / name / f"{split}-{entry_key(fields)}"
    cached = read_entry(folder, expect_source=src_hash)
    if cached is None:
        arrays = (
            task.generate(opts, split, fields["size"], seed)
            if data_dir is None
            else task.load(opts, Path(data_dir), split)
        )
        header = {**fields, "source_hash": src_hash, "spec": dataclasses.asdict(spec), "sources": len(sources)}
        write_entry(folder, arrays, header)
        cached = read_entry(folder, expect_source=src_hash)
        if cached is None:
            raise RuntimeError(f"cache entry {folder} could not be read back")
    return TaskDataset(cached[0], spec, mask_zero_pixels=task.mask_zero_pixels(opts))
