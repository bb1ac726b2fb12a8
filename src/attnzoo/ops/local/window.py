"""The geometry of a local window, resolved from user options (shared by the fast path and the module)."""

from __future__ import annotations

from dataclasses import dataclass

from attnzoo.options import check_choice, check_int

__all__ = ["LocalWindow"]


@dataclass(frozen=True)
class LocalWindow:
    """Resolved local-attention geometry.

    Attributes:
        mode: ``"sliding"`` (query i sees keys within a distance) or ``"blockwise"``
            (efficient-attention: non-sliding blocks of ``size`` tokens, or ``size x size`` tiles in 2D,
            widened by ``extension`` on every side).
        size: sliding: default reach; blockwise: block width w.
        before, after: sliding 1D look-back / look-ahead (after = 0 when causal).
        extension: blockwise overlap e (``max(1, w // 2)`` with ``overlap_window``, else 0).
        grid: ``(height, width)`` of a row-major 2D token grid, or ``None`` for 1D.
    """

    mode: str
    size: int
    before: int
    after: int
    extension: int
    grid: tuple[int, int] | None

    @classmethod
    def resolve(
        cls,
        *,
        mode: str = "sliding",
        window_size: int = 64,
        look_back: int | None = None,
        look_ahead: int | None = None,
        overlap_window: bool = False,
        grid: tuple[int, int] | None = None,
        causal: bool = False,
    ) -> LocalWindow:
        """Validate user options and fill in the defaults.

        Raises:
            ValueError: unknown mode, non-positive window, look-ahead with ``causal``, look-back/ahead with
                a blockwise or 2D window.
        """
        check_choice("mode", mode, ("sliding", "blockwise"))
        check_int("window_size", window_size, minimum=1)
        for name, value in (("look_back", look_back), ("look_ahead", look_ahead)):
            if value is not None:
                check_int(name, value, minimum=0)
                if mode != "sliding" or grid is not None:
                    raise ValueError(f"option {name} applies to 1D sliding windows only (mode='sliding', no grid)")
        if causal and look_ahead:
            raise ValueError(f"a causal local window cannot look ahead; got look_ahead={look_ahead}")
        if overlap_window and mode != "blockwise":
            raise ValueError("option overlap_window applies to mode='blockwise' only")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be (height, width) with positive sizes, got {grid!r}")
        before = window_size if look_back is None else look_back
        after = 0 if causal else (window_size if look_ahead is None else look_ahead)
        extension = max(1, window_size // 2) if overlap_window else 0
        return cls(mode, window_size, before, after, extension, None if grid is None else tuple(grid))  # type: ignore[arg-type]

    def rpe_shape(self, heads: int) -> tuple[int, ...]:
        """Shape of the learned relative-position table (efficient-attention's for blockwise windows).

        * blockwise 1D: ``(H, w, w + 2e)``; blockwise 2D: ``(2(w+e-1)(w+2e+1) + 1, H)`` (official layout,
          whose index aliases some offsets, kept for weight compatibility);
        * sliding 1D: ``(H, before + after + 1)``; sliding 2D: ``(H, 2w+1, 2w+1)``.
        """
        w, e = self.size, self.extension
        if self.mode == "blockwise":
            return (heads, w, w + 2 * e) if self.grid is None else (2 * (w + e - 1) * (w + 2 * e + 1) + 1, heads)
        if self.grid is None:
            return (heads, self.before + self.after + 1)
        return (heads, 2 * w + 1, 2 * w + 1)
