"""Benchmark settings per mechanism, presets and the sweep grid."""

import pytest

import attnzoo
from attnzoo.bench.settings import BENCH_SETTINGS, PRESETS, Shape, bench_options, case_options, parse_shape


def test_every_registered_mechanism_has_valid_benchmark_options():
    for spec in attnzoo.available():
        options = bench_options(spec.name)
        assert options == (BENCH_SETTINGS[spec.name].options if spec.name in BENCH_SETTINGS else {})
        attnzoo.build(spec.name, 32, 2, **options)  # builds with them


def test_table_entries_give_reasons_and_overrides_win():
    assert all(setting.why for setting in BENCH_SETTINGS.values())
    assert bench_options("local") == {"window_size": 256}
    assert bench_options("local", {"window_size": 8, "mode": "blockwise"}) == {"window_size": 8, "mode": "blockwise"}
    with pytest.raises(ValueError, match="unknown option"):
        bench_options("local", {"size": 3})
    with pytest.raises(ValueError, match="unknown attention mechanism 'bogus'"):
        bench_options("bogus")


def test_parse_shape():
    assert parse_shape("2x16X128") == Shape(2, 16, 128)
    assert Shape(1, 8, 64).label() == "1x8x64"
    for bad in ("1x8", "1x0x64", "axbxc", "1x8x64x2"):
        with pytest.raises(ValueError, match="BATCHxHEADSxHEAD_DIM"):
            parse_shape(bad)


def test_preset_grid():
    full = PRESETS["full"]
    cases = full.cases(["softmax", "local"])
    assert len(cases) == 2 * len(full.dtypes) * len(full.causal) * len(full.shapes) == 24
    assert all(c["lengths"] == sorted(full.lengths) for c in cases)
    assert {(c["batch"], c["heads"], c["head_dim"]) for c in cases} == {(1, 8, 64), (4, 16, 128)}
    quick = PRESETS["quick"]
    assert quick.mechanisms is not None and set(quick.mechanisms) <= {s.name for s in attnzoo.available()}
    assert PRESETS["default"].mechanisms is None  # every registered mechanism


def test_per_length_options_follow_n_unless_given():
    assert BENCH_SETTINGS["linformer"].per_length == ("max_length",)
    assert case_options("linformer", {}, 16384) == {"max_length": 16384}
    assert case_options("linformer", {"max_length": 99}, 16384) == {"max_length": 99}
    assert case_options("local", {"window_size": 8}, 16384) == {"window_size": 8}
    assert case_options("not-in-the-table", {"a": 1}, 64) == {"a": 1}
    attnzoo.build("linformer", 32, 2, **case_options("linformer", {}, 8192))
