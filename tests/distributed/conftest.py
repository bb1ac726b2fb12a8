"""One spawn of 4 gloo processes per session (importing torch dominates a spawn); tests read its numbers."""

from __future__ import annotations

from typing import Any

import pytest

from .spawn import run_ranks
from .workers import everything


@pytest.fixture(scope="session")
def ranks() -> list[dict[str, Any]]:
    """``everything()``'s results of ranks 0..3."""
    return run_ranks(4, everything)
