"""Pathfinder generator parameters per resolution and difficulty (spec section 1.5, LRA docstrings).

Difficulty = contour length: ``easy`` 6 (``curv_baseline``), ``intermediate`` 9
(``curv_contour_length_9``), ``hard`` 14 (``curv_contour_length_14``). Distractor snakes have
``contour_length // 3`` paddles and there are ``K // distractor_length`` of them (Python-2 integer
division, as in the original wrapper). Lengths are in output pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DIFFICULTIES", "FOLDERS", "PathfinderParams", "lra_params"]

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}
FOLDERS = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}


@dataclass(frozen=True)
class PathfinderParams:
    """Geometry of one Pathfinder configuration (all lengths in pixels of the final image)."""

    size: int
    padding: int
    margins: tuple[float, ...]  # paddle_margin_list: gap between consecutive paddles, drawn per image
    seed_distance: float
    marker_radius: float
    contour_length: int
    paddle_length: float
    thickness: float
    continuity: float
    distractor_length: int
    num_distractors: int
    snake_contrast: float
    paddle_contrast: float

    @property
    def core_radius(self) -> float:
        """r0: a pixel is drawn (value > 0) iff its centre lies closer than r0 to a paddle's axis."""
        return self.thickness / 2 + 0.5

    @property
    def gap(self) -> int:
        """g: consecutive paddles of one contour have drawn pixels within Chebyshev distance g.

        Distinct contours are kept more than g apart, so "both markers on one contour" is exactly
        "connected through drawn pixels with steps of at most g" (what the tests check).
        """
        return math.ceil(max(self.margins))

    @property
    def paddle_value(self) -> float:
        """Brightness of a paddle before byte scaling (markers are 1.0)."""
        return min(1.0, self.snake_contrast * self.paddle_contrast)


_BY_RES = {
    # res: (padding, margins, seed_distance, marker_radius, paddle_length, thickness, continuity, K, snake, paddle)
    32: (1, (1.0,), 7.0, 1.5, 2.0, 0.5, 1.0, 20, 2.0, 0.75),
    64: (1, (1.0,), 12.0, 2.5, 5.0, 1.0, 1.8, 22, 0.8, 1.0),
    128: (1, (2.0, 3.0), 20.0, 3.0, 5.0, 1.5, 1.8, 35, 0.9, 1.0),
    256: (22, (3.0,), 27.0, 5.0, 5.0, 2.0, 1.8, 30, 1.0, 1.0),
}


def lra_params(resolution: int, difficulty: str = "hard") -> PathfinderParams:
    """LRA's parameters for ``pathfinder{resolution}`` at ``difficulty``; ValueError for unknown values."""
    if resolution not in _BY_RES:
        raise ValueError(f"pathfinder: resolution must be one of {sorted(_BY_RES)}, got {resolution}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"pathfinder: difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    pad, margins, seed_d, marker, plen, thick, cont, k, snake, paddle = _BY_RES[resolution]
    contour = DIFFICULTIES[difficulty]
    dl = contour // 3
    return PathfinderParams(
        resolution, pad, margins, seed_d, marker, contour, plen, thick, cont, dl, k // dl, snake, paddle
    )
