"""A dependency-free progress bar (tqdm is used instead when it is installed).

``progress(iterable, total=..., desc=...)`` returns an iterator that draws one line on stderr,
at most every 0.2 s, and only when stderr is a terminal or ``force=True``; ``bar.set_postfix(**values)``
adds values such as loss and accuracy to the line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Progress", "progress"]


class Progress(Generic[T]):
    """Iterator wrapper that prints ``desc: n/total [rate it/s] key=value ...``."""

    def __init__(self, iterable: Iterable[T] | None, total: int | None, desc: str, enabled: bool) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress: this bar wraps no iterable; call update() instead")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n`` steps."""
        self.count += n
        now = time.perf_counter()
        if self.enabled and now - self._last_draw >= 0.2:
            self._last_draw = now
            self._draw(now)

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs after the counter (floats with 4 significant digits)."""
        self.postfix = values

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.enabled = False

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self._start, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items())
        sys.stderr.write(f"\r{self.desc}: {self.count}{total} [{rate:.1f} it/s] {extra}".rstrip() + " ")
        sys.stderr.flush()


def progress(
    iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", force: bool = False
) -> Progress[T]:
    """Wrap ``iterable`` in a progress bar drawn on stderr when it is a terminal (or ``force``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return Progress(iterable, total, desc, enabled=force or sys.stderr.isatty())
