"""Per-image pure-Python Pathfinder generator: the speed baseline and an independent check.

Same algorithm and parameters as ``pathfinder_gen`` (which see), written the way the original
``snakes2.py`` works: one image at a time, one paddle at a time, per-pixel loops over lists. Used by
``attnzoo data bench`` to measure the vectorised generator's speed-up and by the tests to check the
vectorised renderer pixel for pixel.
"""

from __future__ import annotations

import math
import random

from attnzoo.tasks.lra.pathfinder_params import PathfinderParams

__all__ = ["generate_image", "render_image"]


def _dist(py: float, px: float, seg: tuple[float, float, float, float]) -> float:
    y0, x0, y1, x1 = seg
    dy, dx = y1 - y0, x1 - x0
    t = ((py - y0) * dy + (px - x0) * dx) / max(dy * dy + dx * dx, 1e-12)
    t = min(1.0, max(0.0, t))
    return math.hypot(py - y0 - t * dy, px - x0 - t * dx)


def _pixels(seg: tuple[float, float, float, float], radius: float, size: int) -> list[tuple[int, int, float]]:
    lo_y, hi_y = min(seg[0], seg[2]) - radius, max(seg[0], seg[2]) + radius
    lo_x, hi_x = min(seg[1], seg[3]) - radius, max(seg[1], seg[3]) + radius
    out = []
    for y in range(max(0, math.floor(lo_y)), min(size - 1, math.ceil(hi_y)) + 1):
        for x in range(max(0, math.floor(lo_x)), min(size - 1, math.ceil(hi_x)) + 1):
            d = _dist(y, x, seg)
            if d < radius:
                out.append((y, x, d))
    return out


def render_image(
    p: PathfinderParams, segments: list[tuple[float, float, float, float]], markers: list[tuple[float, float]]
) -> list[list[int]]:
    """Draw paddles and marker discs; returns rows of 0..255 (H lists of W ints)."""
    canvas = [[0.0] * p.size for _ in range(p.size)]
    for seg in segments:
        for y, x, d in _pixels(seg, p.core_radius, p.size):
            canvas[y][x] = max(canvas[y][x], min(1.0, p.core_radius - d) * p.paddle_value)
    for cy, cx in markers:
        for y, x, d in _pixels((cy, cx, cy, cx), p.marker_radius + 0.5, p.size):
            canvas[y][x] = max(canvas[y][x], min(1.0, p.marker_radius + 0.5 - d))
    peak = max(max(row) for row in canvas) or 1.0
    return [[min(255, math.ceil(v * 255.0 / peak)) for v in row] for row in canvas]


class _Image:
    def __init__(self, p: PathfinderParams, rnd: random.Random) -> None:
        self.p, self.rnd = p, rnd
        self.forbidden = [[False] * p.size for _ in range(p.size)]
        self.keep_out = p.gap * math.sqrt(2.0) + 1e-6
        self.lo, self.hi = p.padding, p.size - 1 - p.padding
        step = math.radians(360.0 / (2 * math.pi * (p.paddle_length + max(p.margins))))
        self.turns = []
        t = -math.pi
        while t < math.pi:
            w = max(math.cos(min(abs(t) * p.continuity, math.pi / 2)), 0.0) ** 2
            if w > 1e-9:
                self.turns.append((t, w))
            t += step

    def free(self, seg: tuple[float, float, float, float]) -> bool:
        if not all(self.lo <= v <= self.hi for v in seg):
            return False
        return not any(self.forbidden[y][x] for y, x, _ in _pixels(seg, self.p.core_radius, self.p.size))

    def commit(self, seg: tuple[float, float, float, float], radius: float) -> None:
        for y, x, _ in _pixels(seg, radius, self.p.size):
            self.forbidden[y][x] = True

    def snake(self, y: float, x: float, theta: float, n: int, margin: float) -> list[tuple[float, float, float, float]]:
        length = self.p.paddle_length
        seg = (y, x, y + length * math.sin(theta), x + length * math.cos(theta))
        if not self.free(seg):
            return []
        segs = [seg]
        for _ in range(n - 1):
            options = []
            for turn, w in self.turns:
                t = theta + turn
                ty, tx = segs[-1][2], segs[-1][3]
                cand = (
                    ty + margin * math.sin(t),
                    tx + margin * math.cos(t),
                    ty + (margin + length) * math.sin(t),
                    tx + (margin + length) * math.cos(t),
                )
                if self.free(cand):
                    options.append((t, w, cand))
            if not options:
                break
            theta, _, nxt = self.rnd.choices(options, weights=[o[1] for o in options])[0]
            self.commit(segs[-1], self.p.core_radius + self.keep_out)
            segs.append(nxt)
        self.commit(segs[-1], self.p.core_radius + self.keep_out)
        return segs


def _near(pt: tuple[float, float], segs: list[tuple[float, float, float, float]], clear: float) -> bool:
    return any(_dist(pt[0], pt[1], s) < clear for s in segs)


def generate_image(p: PathfinderParams, rnd: random.Random) -> tuple[list[list[int]], int]:
    """One Pathfinder image (rows of 0..255) and its label, generated per image in pure Python."""
    label, o, margin = rnd.randrange(2), rnd.randrange(2), rnd.choice(p.margins)
    c = p.contour_length
    while True:
        img = _Image(p, rnd)
        s1 = (rnd.randrange(p.padding, p.size - p.padding), rnd.randrange(p.padding, p.size - p.padding))
        phi = math.radians(rnd.randrange(-180, 180))
        s2 = (s1[0] + p.seed_distance * math.sin(phi), s1[1] + p.seed_distance * math.cos(phi))
        a = img.snake(s1[0], s1[1], math.radians(rnd.randrange(-180, 180)), c, margin)
        theta2 = math.radians(rnd.randrange(-180, 180))
        if len(a) < c:
            continue
        b = img.snake(s2[0], s2[1], theta2, c, margin)
        if len(b) < c:
            continue
        pair = (a, b)
        m1 = pair[o][0][:2]
        m2 = pair[o if label else 1 - o][-1][2:]
        clear = p.marker_radius + 0.5 + p.core_radius + img.keep_out
        if _near(m1, pair[1 - o], clear) or _near(m2, pair[1 - o if label else o], clear):
            continue
        break
    for m in (m1, m2):
        img.commit((m[0], m[1], m[0], m[1]), p.marker_radius + 0.5 + img.keep_out)
    segments = a + b
    for _ in range(p.num_distractors):
        for _attempt in range(16):
            y, x = rnd.randrange(p.padding, p.size - p.padding), rnd.randrange(p.padding, p.size - p.padding)
            extra = img.snake(y, x, math.radians(rnd.randrange(-180, 180)), p.distractor_length, margin)
            if extra:
                segments += extra
                break
    return render_image(p, segments, [m1, m2]), label
