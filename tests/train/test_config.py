"""Configs: shipped files load with PyYAML, overrides are typed, errors name the field, the source is recorded."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from attnzoo.train.__main__ import main
from attnzoo.train.cli import PRESETS
from attnzoo.train.config import (
    CONFIG_ROOT,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    default_config_path,
    describe_source,
    load_config,
    parse_yaml,
    read_config_file,
)
from attnzoo.train.optim import lr_factor

CONFIG_FILES = sorted(CONFIG_ROOT.glob("*/*.yaml"))


def test_there_are_configs_for_each_preset() -> None:
    folders = {path.parent.name for path in CONFIG_FILES}
    assert set(PRESETS) == folders  # every folder is a preset the CLI accepts (evit was missing), and back
    assert default_config_path("listops-mini") == CONFIG_ROOT / "mini" / "listops-mini.yaml"
    assert default_config_path("listops", "nystromformer") == CONFIG_ROOT / "nystromformer" / "listops.yaml"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_file_loads(path) -> None:
    text = path.read_text()
    assert parse_yaml(text) == yaml.safe_load(text)  # the shipped files need no extension of PyYAML
    cfg = config_from_dict(read_config_file(path))
    cfg.model.validate()
    assert cfg.steps > 0 and cfg.batch_size > 0


def test_nystromformer_listops_matches_spec() -> None:
    cfg = config_from_dict(read_config_file(CONFIG_ROOT / "nystromformer" / "listops.yaml"))
    assert (cfg.model.dim, cfg.model.num_heads, cfg.model.num_layers, cfg.model.mlp_dim) == (64, 2, 2, 128)
    assert (cfg.model.pooling, cfg.model.positions, cfg.schedule) == ("mean-all", "learned", "onecycle")
    assert (cfg.lr, cfg.warmup_steps, cfg.steps, cfg.eps) == (1e-4, 1000, 5000, 1e-6)
    assert cfg.task_options == {"seq_len": 2048}


def test_yaml_is_pyyaml_and_exponent_floats_are_floats(tmp_path) -> None:
    text = "lr: 1e-3\neps: -2.5E+2\nx: 1.0e-3\nw: 12\nv: .5\nname: e5\nitems: [1, 2.5, x]\nflag: true\n"
    assert yaml.safe_load(text)["lr"] == "1e-3"  # YAML 1.1: a string (what the subset reader disagreed on)
    assert parse_yaml(text) == {
        "lr": 0.001,
        "eps": -250.0,
        "x": 0.001,
        "w": 12,
        "v": 0.5,
        "name": "e5",
        "items": [1, 2.5, "x"],
        "flag": True,
    }
    (tmp_path / "run.yaml").write_text("task: toy\nlr: 1e-3\nmodel:\n  attention_options: {scale: 2e-1}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.lr == 0.001 and cfg.model.attention_options == {"scale": 0.2}
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    message = r"bad.yaml: cannot parse config: expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)"
    with pytest.raises(ValueError, match=message):
        read_config_file(tmp_path / "bad.yaml")


def test_toml_and_json_configs(tmp_path) -> None:
    (tmp_path / "run.toml").write_text('task = "toy"\nsteps = 7\n[model]\ndim = 32\n')
    (tmp_path / "run.json").write_text(json.dumps({"task": "toy", "steps": 7, "model": {"dim": 32}}))
    for name in ("run.toml", "run.json"):
        cfg = config_from_dict(read_config_file(tmp_path / name))
        assert (cfg.task, cfg.steps, cfg.model.dim) == ("toy", 7, 32)


def test_overrides_are_typed() -> None:
    values = apply_overrides(
        {},
        {
            "lr": "3e-4",
            "model.dim": "128",
            "model.attention_options": "{window_size: 16}",
            "betas": "[0.9, 0.95]",
            "data_dir": "none",
            "model.causal": "true",
        },
    )
    cfg = config_from_dict(values)
    assert cfg.lr == 3e-4 and cfg.model.dim == 128 and cfg.model.causal is True
    assert cfg.model.attention_options == {"window_size": 16} and cfg.betas == [0.9, 0.95] and cfg.data_dir is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lrr": "1"}, "unknown config key 'lrr'"),
        ({"model.dimm": "1"}, "unknown config key 'model.dimm'"),
        ({"steps": "many"}, "steps must be of type int"),
        ({"model.causal": "3"}, "model.causal must be true or false"),
        ({"schedule": "exp"}, "schedule must be one of"),
        ({"batch_size": "10", "accumulate": "3"}, "divisible by accumulate"),
        ({"precision": "fp8"}, "precision"),
        ({"model.num_heads": "3"}, "divisible by model.num_heads"),
        ({"schedule": "onecycle", "warmup_steps": "0"}, "warmup_steps"),
    ],
)
def test_bad_overrides_give_clear_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_unknown_key_in_file_and_missing_files(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("task: toy\nmodel:\n  width: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) model.width"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_config(None, {"data_dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="no 'lra' config for task 'toy'"):
        load_config(None, task="toy", preset="lra")


def test_task_named_file_keeps_its_task() -> None:
    cfg = load_config(None, {"steps": "5"}, task="listops-mini")
    assert cfg.task == "listops-mini" and cfg.steps == 5 and cfg.model.dim == 64


def test_config_source_is_recorded_and_described(tmp_path) -> None:
    cfg = load_config(None, task="listops")  # no preset: the CPU-sized mini file comes first
    assert (cfg.config_file, cfg.preset) == (str(CONFIG_ROOT / "mini" / "listops.yaml"), "mini")
    line = describe_source(cfg)
    assert "mini/listops.yaml" in line and "preset mini" in line and "--preset lra" in line
    lra = load_config(None, task="listops", preset="lra")
    assert lra.preset == "lra" and lra.config_file.endswith("lra/listops.yaml") and lra.model.dim == 512
    assert describe_source(lra).endswith("(preset lra)")
    assert load_config(CONFIG_ROOT / "nystromformer" / "text.yaml").preset == "nystromformer"
    (tmp_path / "mine.yaml").write_text("task: toy\n")
    mine = load_config(tmp_path / "mine.yaml")
    assert (mine.config_file, mine.preset) == (str(tmp_path / "mine.yaml"), "")
    bare = load_config(None, {"task": "toy"})
    assert (bare.config_file, bare.preset) == ("", "") and "no config file" in describe_source(bare)
    assert bare.to_dict()["config_file"] == ""  # recorded in config.json and results.json (to_dict)
    with pytest.raises(ValueError, match="unknown config key 'config_file'"):
        load_config(None, {"config_file": "x.yaml"})  # recorded, not set


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset", "lra"], "--preset lra needs --task (one of: "),
        (["train", "--preset", "lra", "--config", "x.yaml"], "--preset lra selects configs/lra/<task>.yaml"),
        (["train", "--task", "toy", "--preset", "lra"], "no 'lra' config for task 'toy'"),
    ],
)
def test_preset_needs_a_task(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_run_dir_template() -> None:
    cfg = TrainConfig(task="toy", seed=3)
    assert str(cfg.run_dir()) == "runs/toy-softmax-s3"


def test_schedules() -> None:
    assert lr_factor("rsqrt", 999, 1000, 5000) == pytest.approx(1.0)
    assert lr_factor("rsqrt", 3999, 1000, 5000) == pytest.approx(0.5)
    assert lr_factor("rsqrt", 499, 1000, 5000) == pytest.approx(0.5)
    assert lr_factor("cosine", 99, 100, 1100) == pytest.approx(1.0)
    assert lr_factor("cosine", 599, 100, 1100) == pytest.approx(0.5)
    assert lr_factor("cosine", 1099, 100, 1100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("linear", 599, 100, 1100) == pytest.approx(0.5)
    assert lr_factor("constant", 4, 10, 100) == pytest.approx(0.5)
    assert math.isclose(lr_factor("constant", 50, 0, 100), 1.0)
