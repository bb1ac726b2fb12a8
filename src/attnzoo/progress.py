"""Progress bars: tqdm on stderr, drawn only when stderr is a terminal (or when forced).

``progress(iterable, total=..., desc=...)`` is a ``tqdm.tqdm``: iterate it, or call ``update(n)``,
``set_postfix(loss=..., acc=...)`` and ``close()``. The line shows ``desc``, count/total, elapsed
and remaining time, the rate and the postfix values; it is redrawn at most every 0.2 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

__all__ = ["progress"]


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    force: bool = False,
    enabled: bool = True,
    initial: int = 0,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or ``total`` steps advanced with ``update``) on stderr.

    Args:
        iterable: what to wrap; ``None`` for a manual bar.
        total: number of steps (default: ``len(iterable)`` when it has one).
        desc: label before the counter.
        force: draw even when stderr is not a terminal.
        enabled: ``False`` never draws (e.g. on ranks other than 0, or with ``progress: false``).
        initial: the count to start from (a resumed run).
    """
    disable = (False if force else None) if enabled else True  # None: tqdm draws only on a terminal
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, mininterval=0.2, dynamic_ncols=True)
