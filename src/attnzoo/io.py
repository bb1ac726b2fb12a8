"""Atomic file writes: a file is either its old version or its complete new version, never half-written.

Every writer in attnzoo (data caches, checkpoints, benchmark records, result tables) goes through
these helpers: the bytes go to a temporary file in the destination folder, are flushed and fsynced,
and the temporary file is then renamed over the destination with ``os.replace`` (atomic on POSIX
and Windows when both paths are on one file system).

Permissions are those ``open()`` would give a new file: the temporary file is created with mode
``0o666`` and the kernel applies the process umask (and the folder's default ACL, if any), so a
shared cache folder stays readable under a umask of 0o022. (``tempfile.mkstemp`` would create it
0o600, and the rename keeps that mode.) Creating with the final mode, rather than chmod-ing after a
read of the umask, needs no process-wide ``os.umask`` round trip, which would race other threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


# tempfile.mkstemp's flags (the last three where the platform has them), distinct bits, so sum = or
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | sum(getattr(os, f, 0) for f in ("O_NOFOLLOW", "O_CLOEXEC", "O_BINARY"))
)


def _create_temporary(dest: Path) -> tuple[int, Path]:
    """A new, exclusively created ``.<name>.<random>.tmp`` beside ``dest`` (mode 0o666 less the umask)."""
    while True:
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:  # a name clash with another writer: draw again
            continue


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path`` atomically.

    Args:
        path: destination file; its parent folders are created.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: for a mode other than ``"wb"`` or ``"w"``.

    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(dest)
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_torch_save(
    path: str | os.PathLike[str], obj: Any, save: Callable[[Any, IO[bytes]], None] | None = None
) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    import torch

    with atomic_open(path, "wb") as handle:
        (save or torch.save)(obj, handle)
