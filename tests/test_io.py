"""Atomic writes (``attnzoo.io``): all-or-nothing replacement, and new files get the mode the umask allows."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from attnzoo.io import atomic_open, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from attnzoo.tasks.cache import write_entry
from attnzoo.tasks.png import write_png_gray
from attnzoo.tasks.spec import SplitArrays


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("umask", "want"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], indirect=["umask"])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int, want: int) -> None:
    """Every writer creates files as ``open()`` would (0o666 & ~umask), not mkstemp's 0o600."""
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "y")
    atomic_write_json(tmp_path / "c.json", {"k": 1})
    atomic_torch_save(tmp_path / "d.pt", {"w": torch.ones(2)})
    write_png_gray(tmp_path / "e.png", np.zeros((2, 3), np.uint8))
    arrays = SplitArrays(np.zeros((2, 4), np.int16), np.full(2, 4, np.int32), np.zeros(2, np.int64))
    write_entry(tmp_path / "entry", arrays, {"task": "t"})
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.name for p in files] == [
        "a.bin", "b.txt", "c.json", "d.pt", "e.png", "header.json", "inputs.npy", "labels.npy", "lengths.npy"
    ]  # fmt: skip
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(want) for p in files}
    # replacing an existing file gives the new file the same mode (the umask, not the old file's bits)
    (tmp_path / "a.bin").chmod(0o640)
    atomic_write_bytes(tmp_path / "a.bin", b"z")
    assert _mode(tmp_path / "a.bin") == want and (tmp_path / "a.bin").read_bytes() == b"z"
    assert _mode(tmp_path / "entry") == 0o777 & ~umask  # folders too


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    atomic_write_text(target, "new é")
    assert target.read_text(encoding="utf-8") == "new é" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(ValueError, match=r"mode must be 'wb' or 'w', got 'a'"), atomic_open(target, "a"):
        pass
