"""One spawn of 4 gloo processes per session (importing torch dominates a spawn); tests read its numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .spawn import run_ranks
from .workers import everything


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the harness runs write (``sp2``: the 4-rank run, ``sp1``: the single process)."""
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="session")
def ranks(harness_dir: Path) -> list[dict[str, Any]]:
    """``everything()``'s results of ranks 0..3."""
    return run_ranks(4, everything, str(harness_dir))
