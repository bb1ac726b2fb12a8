"""What ``attnzoo bench`` runs: per-mechanism benchmark options, presets and the sweep grid.

Every registered mechanism is benchmarked; :data:`BENCH_SETTINGS` holds the options a mechanism runs
with in benchmarks (and why), keyed by name. A name not in the table runs with its own defaults
(``attnzoo.options(name)()``); ``--option MECH.NAME=VALUE`` overrides either.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import attnzoo

__all__ = [
    "BENCH_SETTINGS",
    "GRID_2D_SETTINGS",
    "PRESETS",
    "BenchSetting",
    "Preset",
    "Shape",
    "bench_options",
    "case_options",
    "grid_options",
    "parse_shape",
]


@dataclass(frozen=True)
class BenchSetting:
    """Benchmark options of one mechanism, the reason they were chosen, and the option names that
    follow the sequence length (``per_length``: set to N in each case, e.g. a maximum length)."""

    options: dict[str, Any]
    why: str
    per_length: tuple[str, ...] = ()


BENCH_SETTINGS: dict[str, BenchSetting] = {
    "local": BenchSetting({"window_size": 256}, "issue 2's reference: sliding window, 256 keys on each side"),
    "dilated": BenchSetting(
        {"segment_lengths": (2048, 4096, 8192), "dilation_rates": (1, 2, 4)},
        "issue 2's reference: LongNet's first three (segment, dilation) pairs",
    ),
    "linformer": BenchSetting(
        {"sharing": "headwise-kv"},
        "k = 256 with the linformer package's sharing (one E for keys and values and for all heads, as its "
        "share_kv=True); E sized to each case's N",
        per_length=("max_length",),
    ),
    "eva": BenchSetting(
        {"window_size": 256, "num_landmarks": 64},
        "issue 8's reference: the official EVA timed at window 256 with 64 landmarks (defaults are LRA-image sizes)",
    ),
    "causal_eva": BenchSetting({"window_size": 256}, "the same local window as eva's benchmark"),
    "lara": BenchSetting({"num_landmarks": 64}, "issue 8's reference: the official LARA timed with 64 landmarks"),
    "scatterbrain": BenchSetting({"window_size": 256}, "the same local window as eva's benchmark"),
}
"""Benchmark options per mechanism; names not listed run with their defaults."""

GRID_2D_SETTINGS: dict[str, BenchSetting] = {
    "local": BenchSetting({"attn_2d": True, "window_size": 7, "use_rpe": True}, "the seed's ViT: 7 x 7 windows, RPE"),
    "eva": BenchSetting(
        {"attn_2d": True, "window_size": 7, "num_landmarks": 49, "use_rpe": True},
        "the seed's ViT (spec efficient-attention-eva-lara-longnet §11.1): 7 x 7 windows, 49 landmarks, RPE",
    ),
    "lara": BenchSetting(
        {"attn_2d": True, "num_landmarks": 49, "proposal_gen": "pool-mixed", "alpha_coeff": 2.0},
        "the seed's ViT: 49 pooled landmarks (7 x 7 cells), pool-mixed proposals, alpha 2.0",
    ),
}
"""Options of the 2D-capable mechanisms in presets with ``grid_2d`` (the patch grid, a square of side sqrt(N))."""


def grid_options(seq_len: int) -> dict[str, int]:
    """``{image_height, image_width}`` of the square grid of ``seq_len`` tokens.

    Raises:
        ValueError: ``seq_len`` is not a perfect square.
    """
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ValueError(
            f"2D attention (attn_2d) is benchmarked on square grids: length {seq_len} is not a square "
            "(e.g. 196, 784, 3136: 224 px images at patch 16, 8, 4)"
        )
    return {"image_height": side, "image_width": side}


def case_options(name: str, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """``options`` for a case of length ``seq_len`` (explicit values win): the mechanism's ``per_length``
    options set to ``seq_len``, and with ``attn_2d`` the square grid (:func:`grid_options`)."""
    setting = BENCH_SETTINGS.get(name)
    derived: dict[str, Any] = {key: seq_len for key in setting.per_length} if setting else {}
    if options.get("attn_2d"):
        derived.update(grid_options(seq_len))
    return {**derived, **options}


def bench_options(name: str, overrides: dict[str, Any] | None = None, *, grid_2d: bool = False) -> dict[str, Any]:
    """Options ``name`` runs with: its table entry (or its defaults), then ``overrides``; validated.

    ``grid_2d``: a mechanism in :data:`GRID_2D_SETTINGS` takes that entry (2D attention) instead.

    Raises:
        ValueError: unknown mechanism or option, invalid value.
    """
    spec = attnzoo.get_spec(name)
    setting = (GRID_2D_SETTINGS if grid_2d and name in GRID_2D_SETTINGS else BENCH_SETTINGS).get(name)
    merged = {**(setting.options if setting else {}), **(overrides or {})}
    from attnzoo.registry import make_options

    make_options(spec.options, merged, context=name)  # raises on unknown names or bad values
    return merged


@dataclass(frozen=True)
class Shape:
    """Batch, heads and head width of a case."""

    batch: int
    heads: int
    head_dim: int

    def label(self) -> str:
        """``B x H x d`` as written on the command line, e.g. ``1x8x64``."""
        return f"{self.batch}x{self.heads}x{self.head_dim}"


def parse_shape(text: str) -> Shape:
    """``"1x8x64"`` -> ``Shape(1, 8, 64)``.

    Raises:
        ValueError: not three positive integers joined by ``x``.
    """
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a shape is BATCHxHEADSxHEAD_DIM with positive integers, e.g. 1x8x64; got {text!r}")
    return Shape(*(int(p) for p in parts))


@dataclass(frozen=True)
class Preset:
    """A named sweep. ``mechanisms=None`` means every registered mechanism; ``grid_2d``: the 2D-capable
    mechanisms attend over the square grid of each length (:data:`GRID_2D_SETTINGS`)."""

    mechanisms: tuple[str, ...] | None
    lengths: tuple[int, ...]
    error_lengths: tuple[int, ...]
    repeats: int
    dtypes: tuple[str, ...] = ("float32",)
    causal: tuple[bool, ...] = (False,)
    shapes: tuple[Shape, ...] = (Shape(1, 8, 64),)
    passes: tuple[str, ...] = ("fwd", "fwdbwd")
    time_budget_s: float = 120.0
    memory_budget_mib: float = 16384.0
    peer_lengths: tuple[int, ...] = field(default=(1024, 4096))
    grid_2d: bool = False
    block_s: float = 0.01

    def cases(self, mechanisms: list[str]) -> list[dict[str, Any]]:
        """The grid as plain dicts (one per mechanism x dtype x causal x shape), lengths ascending inside."""
        grid = itertools.product(mechanisms, self.dtypes, self.causal, self.shapes)
        return [
            {"mechanism": m, "dtype": dt, "causal": c, **dataclasses.asdict(s), "lengths": sorted(self.lengths)}
            for m, dt, c, s in grid
        ]


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        mechanisms=("softmax", "local", "dilated", "none"),
        lengths=(1024, 2048),
        error_lengths=(256,),
        repeats=2,
        time_budget_s=30.0,
        peer_lengths=(1024,),
    ),
    "default": Preset(mechanisms=None, lengths=(1024, 2048, 4096), error_lengths=(256, 1024), repeats=3),
    "docs": Preset(
        mechanisms=None,
        lengths=(1024, 2048, 4096, 8192, 16384),
        error_lengths=(256, 1024, 4096),
        repeats=3,
        causal=(False, True),
        time_budget_s=300.0,
        peer_lengths=(1024, 4096, 16384),
    ),
    "short": Preset(
        mechanisms=("softmax", "local", "dilated", "butterfly"),
        lengths=(128, 256, 512, 1024),
        error_lengths=(256,),
        repeats=9,
        block_s=0.1,
        causal=(False, True),
        shapes=(Shape(1, 8, 64), Shape(4, 8, 64)),
        time_budget_s=60.0,
        peer_lengths=(1024,),
    ),
    "grid2d": Preset(
        mechanisms=("softmax", "local", "eva", "lara", "none"),
        lengths=(196, 784, 3136),
        error_lengths=(196, 784),
        repeats=3,
        peer_lengths=(784,),
        grid_2d=True,
    ),
    "full": Preset(
        mechanisms=None,
        lengths=(1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
        error_lengths=(256, 1024, 4096, 16384),
        repeats=10,
        dtypes=("bfloat16", "float16", "float32"),
        causal=(False, True),
        shapes=(Shape(1, 8, 64), Shape(4, 16, 128)),
        time_budget_s=300.0,
        memory_budget_mib=65536.0,
        peer_lengths=(4096, 16384, 65536),
    ),
}
"""``quick``: under a minute on a 2-core CPU; ``default``: a few minutes, every mechanism; ``docs``: what
docs/benchmarks.md shows (1k..16k, causal and not, peers); ``short``: the exact block-sparse mechanisms
against softmax at N = 128 .. 1024, B = 1 and 4, causal and not, in 9 timed blocks of 0.1 s each (sub-millisecond
calls need them: 10 ms blocks swung 30% between identical calls; ``--module`` for whole layers); ``grid2d``: ViT
patch grids (14 x 14, 28 x 28,
56 x 56 = 224 px at patch 16, 8, 4) with local, EVA and LARA in 2D next to softmax and none; ``full``: for
GPUs (to 128k, bf16/fp16/fp32, two shapes)."""
