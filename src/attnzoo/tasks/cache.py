"""On-disk cache of preprocessed splits: one folder per entry with ``.npy`` arrays and ``header.json``.

An entry is ``<root>/<task>/<split>-<key>/`` where ``key`` hashes the task, its version and options,
the split, size and seed, and (for official files) where they are. ``header.json`` records task,
version, seed, sizes, shapes and the hash of the source files; it is written last, so an entry
without a valid header is incomplete and ignored. Arrays are memory-mapped on load. An entry whose
source hash no longer matches the files is rebuilt. Every file goes through ``attnzoo.io``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.io import atomic_open, atomic_write_json
from attnzoo.tasks.spec import SplitArrays

__all__ = ["CACHE_FORMAT", "default_cache_dir", "entry_key", "read_entry", "source_hash", "write_entry"]

CACHE_FORMAT = 1
HEADER = "header.json"


def default_cache_dir() -> Path:
    """``$ATTNZOO_CACHE`` if set, else ``~/.cache/attnzoo``."""
    env = os.environ.get("ATTNZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnzoo"


def source_hash(files: Iterable[Path]) -> str:
    """SHA-256 over (path, size, mtime) of every source file: changes when any file is rewritten."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        st = path.stat()
        digest.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def entry_key(fields: dict[str, Any]) -> str:
    """A short stable hash of ``fields`` (JSON-serialisable) naming a cache entry."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_entry(folder: Path, arrays: SplitArrays, header: dict[str, Any]) -> None:
    """Write ``arrays`` as ``<name>.npy`` files and then ``header.json`` into ``folder``.

    On any error the folder is removed, so no incomplete entry is left behind.
    """
    folder = Path(folder)
    try:
        shapes = {}
        for name, array in arrays.named().items():
            with atomic_open(folder / f"{name}.npy", "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            shapes[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        atomic_write_json(
            folder / HEADER, {**header, "format": CACHE_FORMAT, "arrays": shapes, "examples": len(arrays)}
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def read_header(folder: Path) -> dict[str, Any] | None:
    """The entry's header, or None when it is missing, unreadable or from another cache format."""
    try:
        header = json.loads((Path(folder) / HEADER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("format") == CACHE_FORMAT else None


_FIELDS = {f.name for f in dataclasses.fields(SplitArrays)}
_REQUIRED = {"inputs", "lengths", "labels"}


def _array_metas(header: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The header's ``arrays`` map if it is well formed (known names, each with a shape list and a dtype)."""
    metas = header.get("arrays")
    if not isinstance(metas, dict) or not _REQUIRED <= set(metas) <= _FIELDS:
        return None
    for meta in metas.values():
        if not (isinstance(meta, dict) and isinstance(meta.get("shape"), list) and isinstance(meta.get("dtype"), str)):
            return None
    return metas


def read_entry(folder: Path, *, expect_source: str | None = None) -> tuple[SplitArrays, dict[str, Any]] | None:
    """Memory-map a complete entry; None if absent, incomplete, damaged, or built from other source files.

    A damaged entry (a header that is not what ``write_entry`` writes, an unreadable ``.npy``, an
    array whose shape or dtype differs from the header) is a miss, so the caller rebuilds it.

    Returns:
        ``(arrays, header)`` with read-only memory-mapped arrays.
    """
    header = read_header(folder)
    if header is None or (expect_source is not None and header.get("source_hash") != expect_source):
        return None
    metas = _array_metas(header)
    if metas is None:
        return None
    loaded = {}
    for name, meta in metas.items():
        try:
            array = np.load(Path(folder) / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except Exception:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            return None
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
            return None
        loaded[name] = array
    return SplitArrays(**loaded), header
