"""Vectorised Pathfinder generator: many images grown in lock-step with numpy.

Algorithm (after ``drewlinsley/pathfinder@ab9c130:snakes2.py``, spec 1.5), per image:
two target contours of ``contour_length`` paddles start from seeds ``seed_distance`` apart; each new
paddle starts ``margin`` beyond the previous one, its direction drawn from the pmf
``max(cos(min(|dtheta| * continuity, pi/2)), 0)^2`` over the directions that do not collide; the pair
is regrown until both complete. Then ``num_distractors`` distractor contours of ``distractor_length``
paddles (incomplete ones allowed). A marker disc goes on the origin tip of contour ``o`` and on the
terminal tip of the same contour (label 1) or of the other one (label 0). Rendering: anti-aliased
paddles (coverage ``clip(r0 - dist, 0, 1)``) and discs combined with ``max``, then byte-scaled so the
maximum is 255 and the background 0 (as ``scipy.misc.imsave``).
All images of a chunk advance together: every step evaluates all candidate directions of all images
on small pixel patches (P, P, B*K), candidates last so numpy's loops run long and contiguous; images
are addressed through flat indices. There is no per-pixel or per-image Python loop.
Collision rule: a paddle's drawn pixels may not come within Chebyshev distance ``gap`` of another
paddle's (except its predecessor), so distinct contours never touch (see ``PathfinderParams.gap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnzoo.tasks.lra.pathfinder_params import PathfinderParams

__all__ = ["PathfinderBatch", "generate_batch", "render"]

ATTEMPTS = 12
SQRT2 = math.sqrt(2.0)


@dataclass
class PathfinderBatch:
    """Images (n, H, W) uint8, labels (n,) int64, per-image margins (n,), segments (n, S, 4) [y0 x0 y1 x1]
    (NaN = absent), paddle values (n, S) and marker centres (n, 2, 2) [y x]."""

    images: np.ndarray
    labels: np.ndarray
    margins: np.ndarray
    segments: np.ndarray
    values: np.ndarray
    markers: np.ndarray


def _unit(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)


def segment_patch(a: np.ndarray, b: np.ndarray, radius: float, length: float) -> tuple[np.ndarray, ...]:
    """Pixel patch around N segments a->b ((N, 2) each): integer rows (P, 1, N), cols (1, P, N) and the
    squared distance of each pixel centre to its segment (P, P, N) float32; P covers ``radius`` around it.

    Segments are the *last* axis so every elementwise operation runs over long contiguous rows (numpy's
    per-inner-loop overhead dominated with the patch axes last). P = ceil(length + 2 radius + 1/4) + 1:
    a pixel within ``radius`` lies at offset < length + 2 radius + 1 from ``floor(min(a, b) - radius)``,
    and the 1/4 keeps every dropped pixel well outside the radius, so no float rounding can matter
    (``length`` must bound |b - a|).
    """
    size = math.ceil(length + 2 * radius + 0.25) + 1
    origin = np.floor(np.minimum(a, b) - radius).astype(np.int64)
    ar = np.arange(size)[:, None]
    yy, xx = origin[:, 0] + ar, origin[:, 1] + ar  # (P, N)
    d = b - a
    # offsets from a, in float32 (ample for sub-pixel geometry); keep the order of operations: the
    # collision tests, hence the images, depend on the exact float32 values
    ry = (yy - a[:, 0]).astype(np.float32)
    rx = (xx - a[:, 1]).astype(np.float32)
    dy, dx = d[:, 0].astype(np.float32), d[:, 1].astype(np.float32)
    inv = 1.0 / np.maximum(dy * dy + dx * dx, np.float32(1e-12))
    t = (ry * (dy * inv))[:, None] + (rx * (dx * inv))[None]  # (P, P, N)
    np.clip(t, 0.0, 1.0, out=t)
    ey = t * dy
    np.subtract(ry[:, None], ey, out=ey)
    ey *= ey
    t *= dx
    np.subtract(rx[None], t, out=t)
    t *= t
    ey += t
    return yy[:, None], xx[None], ey


class _Grower:
    """Forbidden-zone state of a chunk of images and the lock-step snake growth."""

    def __init__(self, p: PathfinderParams, n: int, rng: np.random.Generator) -> None:
        self.p, self.rng = p, rng
        self.r0 = p.core_radius
        self.keep_out = p.gap * SQRT2 + 1e-6
        self.off = math.ceil(p.marker_radius + 0.5 + self.keep_out) + 3
        self.side = side = p.size + 2 * self.off
        self.forbidden = np.zeros((n, side, side), dtype=bool)
        self.flat = self.forbidden.reshape(-1)  # a view: flat indices are cheaper than 3-d fancy indexing
        self.lo, self.hi = float(p.padding), float(p.size - 1 - p.padding)
        # candidate directions one pixel of arc apart on the circle of radius length + margin (as the original)
        step = math.radians(360.0 / (2 * math.pi * (p.paddle_length + max(p.margins))))
        turns = np.arange(-math.pi, math.pi, step)
        weight = np.maximum(np.cos(np.minimum(np.abs(turns) * p.continuity, math.pi / 2)), 0) ** 2
        self.turns, self.pmf = turns[weight > 1e-9], weight[weight > 1e-9]

    def inside(self, pt: np.ndarray) -> np.ndarray:
        return np.all((pt >= self.lo) & (pt <= self.hi), axis=-1)

    def _index(self, rows: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Flat indices into ``forbidden`` (P, P, N) of patch pixels (yy, xx) of images ``rows`` (N,)."""
        base = (rows * self.side + self.off) * self.side + self.off
        return (yy * self.side + base) + xx

    def free(self, rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N,) True where paddle a->b ((N, 2), image ``rows`` (N,)) is inside and hits no forbidden pixel."""
        inside = self.inside(a) & self.inside(b)
        a, b = np.clip(a, self.lo, self.hi), np.clip(b, self.lo, self.hi)  # outside ones are rejected anyway
        yy, xx, dist2 = segment_patch(a, b, self.r0, self.p.paddle_length)
        hit = self.flat.take(self._index(rows, yy, xx))
        hit &= dist2 < self.r0**2
        return inside & ~hit.any(axis=(0, 1))

    def stamp(self, rows: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, length: float) -> None:
        """Forbid the pixels within ``radius`` of segments a->b ((n, 2)), one per row of ``rows``."""
        yy, xx, dist2 = segment_patch(a, b, radius, length)
        self.flat[self._index(rows, yy, xx)[dist2 < radius * radius]] = True

    def commit(self, rows: np.ndarray, seg: np.ndarray) -> None:
        self.stamp(rows, seg[:, :2], seg[:, 2:], self.r0 + self.keep_out, self.p.paddle_length)

    def grow(
        self, rows: np.ndarray, start: np.ndarray, theta0: np.ndarray, n_paddles: int, margin: np.ndarray
    ) -> np.ndarray:
        """Grow one contour per row; first paddle = the first free of K0 candidates (start (n, K0, 2),
        theta0 (n, K0)). Returns segments (n, n_paddles, 4), NaN after the contour got stuck."""
        n, length = len(rows), self.p.paddle_length
        segs = np.full((n, n_paddles, 4), np.nan)
        end0 = start + length * _unit(theta0)
        k0 = start.shape[1]
        ok = self.free(np.repeat(rows, k0), start.reshape(-1, 2), end0.reshape(-1, 2)).reshape(n, k0)
        first = np.argmax(ok, axis=1)
        alive = ok.any(axis=1)
        pick = np.arange(n)
        segs[alive, 0] = np.concatenate([start[pick, first], end0[pick, first]], axis=-1)[alive]
        theta = theta0[pick, first]
        for k in range(1, n_paddles):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            # every candidate turn is tested; the pmf is masked by collisions (snakes.get_coords_cmf)
            cand = theta[idx, None] + self.turns[None, :]  # (m, K)
            u = _unit(cand)
            tip = segs[idx, k - 1, None, 2:]
            a = tip + margin[idx, None, None] * u
            b = tip + (margin[idx, None, None] + length) * u
            nk = len(self.turns)
            ok = self.free(np.repeat(rows[idx], nk), a.reshape(-1, 2), b.reshape(-1, 2)).reshape(-1, nk)
            weights = self.pmf[None, :] * ok
            total = weights.sum(axis=1)
            can = total > 0
            draw = self.rng.random(idx.size) * total
            choice = np.minimum((np.cumsum(weights, axis=1) < draw[:, None]).sum(axis=1), len(self.turns) - 1)
            sel, ch = idx[can], choice[can]
            self.commit(rows[sel], segs[sel, k - 1])  # the predecessor becomes an obstacle now
            segs[sel, k] = np.concatenate([a[can, ch], b[can, ch]], axis=-1)
            theta[sel] = cand[can, ch]
            alive[idx[~can]] = False
        placed = ~np.isnan(segs[:, :, 0])
        last = placed.sum(axis=1) - 1
        has = last >= 0
        self.commit(rows[has], segs[np.flatnonzero(has), last[has]])
        return segs


def _seg_distance(pt: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """Min distance from points (n, 2) to segments (n, S, 4) -> (n,)."""
    a, d = segs[..., :2], segs[..., 2:] - segs[..., :2]
    t = np.clip(np.sum((pt[:, None] - a) * d, -1) / np.maximum(np.sum(d * d, -1), 1e-12), 0, 1)
    dist = np.linalg.norm(pt[:, None] - a - t[..., None] * d, axis=-1)
    return np.where(np.isnan(dist), np.inf, dist).min(axis=1)


def _targets(g: _Grower, n: int, margin: np.ndarray, o: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grow the two target contours of every image; returns segments (n, 2, C, 4) and markers (n, 2, 2).

    Each round grows ``ATTEMPTS`` independent pairs per unfinished image side by side and keeps the
    first that succeeds (same as regrowing the pair until it succeeds, but vectorised).
    """
    p, rng = g.p, g.rng
    c = p.contour_length
    segs = np.full((n, 2, c, 4), np.nan)
    markers = np.zeros((n, 2, 2))
    todo = np.arange(n)
    for _ in range(100):
        if todo.size == 0:
            return segs, markers
        owner = np.repeat(todo, ATTEMPTS)  # image of each attempt
        m = owner.size
        trial = _Grower(p, m, rng)
        rows = np.arange(m)
        s1 = rng.integers(p.padding, p.size - p.padding, size=(m, 2)).astype(float)
        phi = np.deg2rad(rng.integers(-180, 180, size=(m, 8)))
        s2c = s1[:, None] + p.seed_distance * _unit(phi)
        s2 = s2c[rows, np.argmax(trial.inside(s2c), axis=1)]
        th = np.deg2rad(rng.integers(-180, 180, size=(m, 2))).astype(float)
        sa = trial.grow(rows, s1[:, None], th[:, :1], c, margin[owner])
        sb = np.full_like(sa, np.nan)
        grown = np.flatnonzero(~np.isnan(sa[:, -1, 0]))  # only where the first contour completed
        sb[grown] = trial.grow(grown, s2[grown, None], th[grown, 1:], c, margin[owner[grown]])
        pair = np.stack([sa, sb], axis=1)
        oo, lab = o[owner], label[owner]
        m1 = pair[rows, oo, 0, :2]
        m2 = pair[rows, np.where(lab == 1, oo, 1 - oo), c - 1, 2:]
        clear = p.marker_radius + 0.5 + g.r0 + g.keep_out
        ok = ~np.isnan(pair[:, :, -1, 0]).any(axis=1)
        ok &= _seg_distance(m1, pair[rows, 1 - oo]) >= clear
        ok &= _seg_distance(m2, pair[rows, np.where(lab == 1, 1 - oo, oo)]) >= clear
        per_image = ok.reshape(-1, ATTEMPTS)
        won = per_image.any(axis=1)
        best = np.flatnonzero(won) * ATTEMPTS + np.argmax(per_image[won], axis=1)
        done = todo[won]
        segs[done], markers[done, 0], markers[done, 1] = pair[best], m1[best], m2[best]
        g.forbidden[done] = trial.forbidden[best]
        todo = todo[~won]
    raise RuntimeError(f"pathfinder: could not place target contours for {todo.size} images after 100 rounds")


def render(p: PathfinderParams, segments: np.ndarray, values: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Draw paddles (n, S, 4) with values (n, S) and marker discs (n, 2, 2); returns (n, H, W) uint8."""
    n = segments.shape[0]
    r0, rm = p.core_radius, p.marker_radius + 0.5
    off = math.ceil(rm) + 3
    side = p.size + 2 * off
    canvas = np.zeros((n, side, side), dtype=np.float64)
    flat = canvas.reshape(-1)

    def draw(rows: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, length: float, value: np.ndarray) -> None:
        yy, xx, dist2 = segment_patch(a, b, radius, length)
        dist = np.sqrt(dist2.astype(np.float64))
        idx = (yy * side + (rows * side + off) * side + off) + xx
        flat[idx] = np.maximum(flat[idx], np.clip(radius - dist, 0.0, 1.0) * value)

    for s in range(segments.shape[1]):
        rows = np.flatnonzero(~np.isnan(segments[:, s, 0]))
        seg = segments[rows, s]
        draw(rows, seg[:, :2], seg[:, 2:], r0, p.paddle_length, values[rows, s])
    everyone = np.arange(n)
    for k in range(2):
        draw(everyone, markers[:, k], markers[:, k], rm, 0.0, np.ones(n))
    img = canvas[:, off : off + p.size, off : off + p.size]
    peak = img.reshape(n, -1).max(axis=1)[:, None, None]
    return np.minimum(np.ceil(img * 255.0 / np.maximum(peak, 1e-12)), 255).astype(np.uint8)


def generate_batch(p: PathfinderParams, n: int, rng: np.random.Generator) -> PathfinderBatch:
    """``n`` Pathfinder images with their labels and geometry, drawn from ``rng``."""
    g = _Grower(p, n, rng)
    margin = rng.choice(np.asarray(p.margins), size=n)
    o = rng.integers(0, 2, size=n)
    label = rng.integers(0, 2, size=n)
    targets, markers = _targets(g, n, margin, o, label)
    rows = np.arange(n)
    for k in range(2):  # distractors keep away from the marker discs as well
        g.stamp(rows, markers[:, k], markers[:, k], p.marker_radius + 0.5 + g.keep_out, 0.0)
    parts = [targets.reshape(n, -1, 4)]
    for _ in range(p.num_distractors):
        start = rng.integers(p.padding, p.size - p.padding, size=(n, 16, 2)).astype(float)
        theta0 = np.deg2rad(rng.integers(-180, 180, size=(n, 16))).astype(float)
        parts.append(g.grow(rows, start, theta0, p.distractor_length, margin))
    segments = np.concatenate(parts, axis=1)
    values = np.full(segments.shape[:2], p.paddle_value)
    images = render(p, segments, values, markers)
    return PathfinderBatch(images, label.astype(np.int64), margin, segments, values, markers)
