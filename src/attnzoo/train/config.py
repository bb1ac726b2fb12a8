"""``TrainConfig``: one typed dataclass for a run, read from YAML/TOML/JSON and overridden field by field.

Files live in ``configs/`` (``lra/`` official LRA ``transformer_base``, ``nystromformer/`` the
Nystromformer-LRA settings, ``mini/`` CPU-sized runs). A file holds the fields of ``TrainConfig``
with the model under ``model:``; every field can then be overridden as ``key=value`` or
``model.key=value``. Unknown keys, wrong types and out-of-range values raise ``ValueError``
naming the field. Files are read by :mod:`attnzoo.train.config_files`; which file and preset a
run uses is recorded in the config itself (``config_file``, ``preset``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnzoo.models import ModelConfig
from attnzoo.train.config_files import CONFIG_ROOT, default_config_path, parse_yaml, preset_of, read_config_file

__all__ = [
    "CONFIG_ROOT",
    "SCHEDULES",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "default_config_path",
    "describe_source",
    "flat_fields",
    "load_config",
    "parse_yaml",
    "read_config_file",
]

SCHEDULES = ("constant", "rsqrt", "cosine", "linear", "onecycle")
INTERNAL = {"internal": True}  # field metadata: set by load_config, not a flag or override


@dataclass
class TrainConfig:
    """Everything a run needs; ``out_dir`` may use ``{task}``, ``{attention}`` and ``{seed}``."""

    task: str = "listops-mini"  # attnzoo.tasks name
    task_options: dict[str, Any] = field(default_factory=dict)  # e.g. {seq_len: 512}
    data_dir: str | None = None  # official-layout files; None = generate and cache
    cache_dir: str | None = None  # where generated data is cached (None = the task default)
    train_size: int | None = None  # generated examples per split (None = task default)
    dev_size: int | None = None
    test_size: int | None = None
    data_seed: int = 0  # seed of the generated data (independent of the model seed)
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 32  # examples per optimiser step, over all processes and accumulation steps
    accumulate: int = 1  # gradient accumulation steps per optimiser step
    sequence_parallel: int = 1  # ranks sharing each sequence (dilated attention; docs/sequence-parallel.md)
    steps: int = 1000  # optimiser steps
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"  # one of SCHEDULES
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    eval_every: int = 100  # dev evaluation (and checkpoint) every k steps
    eval_batches: int = 0  # dev batches per evaluation; 0 = the whole dev set
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 only on CUDA)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/{task}-{attention}-s{seed}"
    log_every: int = 10  # train metrics every k steps
    save_every: int = 0  # extra "last" checkpoints every k steps; 0 = only at evaluations
    num_workers: int = 0  # DataLoader worker processes (a background thread always prefetches)
    prefetch: int = 2  # batches kept ready ahead of the model
    resume: str = ""  # "" (fresh run; refuses an existing checkpoint), "auto" or a checkpoint path
    init_from: str = ""  # curriculum: start from this checkpoint's weights (positions resized)
    scale_options: list[str] = field(default_factory=lambda: ["block_size"])  # options scaled with the side length
    max_time: float = 0.0  # wall-clock budget in seconds; 0 = none
    resume_with_new_settings: bool = False  # resume although task/data/seed/optimiser settings changed; the new apply
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    progress: bool = True  # progress bar on a terminal
    config_file: str = field(default="", metadata=INTERNAL)  # the file this config was read from ("" = none)
    preset: str = field(default="", metadata=INTERNAL)  # the configs/<preset>/ folder of that file ("" = none)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        self.model.validate()
        positive = ("batch_size", "accumulate", "sequence_parallel", "steps", "eval_every", "log_every", "prefetch")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_batches", "save_every", "num_workers", "lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by accumulate ({self.accumulate})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.schedule in ("rsqrt", "onecycle") and self.warmup_steps < 1:
            raise ValueError(f"schedule {self.schedule!r} needs warmup_steps >= 1")
        if self.warmup_steps > self.steps and self.schedule == "onecycle":
            raise ValueError(f"onecycle needs warmup_steps <= steps, got {self.warmup_steps} > {self.steps}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16; got {self.precision!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {self.data_dir!r} does not exist or is not a directory")
        if self.init_from and not Path(self.init_from).is_file():
            raise FileNotFoundError(f"init_from checkpoint {self.init_from!r} does not exist")

    def run_dir(self) -> Path:
        """``out_dir`` with ``{task}``, ``{attention}`` and ``{seed}`` filled in."""
        return Path(self.out_dir.format(task=self.task, attention=self.model.attention, seed=self.seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML friendly); ``config_from_dict`` inverts it."""
        return dataclasses.asdict(self)


def flat_fields() -> dict[str, Any]:
    """Every overridable field as ``{"lr": float, "model.dim": int, ...}`` (name to type hint)."""
    out: dict[str, Any] = {}
    for prefix, cls in (("", TrainConfig), ("model.", ModelConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is not ModelConfig and not f.metadata.get("internal"):
                out[prefix + f.name] = hints[f.name]
    return out


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check/convert ``value`` for field ``key`` of type ``hint`` (strings from the CLI are parsed)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce(key, args[0], value)
    if origin in (dict, list):
        if isinstance(value, str):
            value = _parse_cli_value(key, value)
        if not isinstance(value, origin):
            raise ValueError(f"{key} must be a {origin.__name__}, got {value!r}")
        if origin is list and args and args[0] in (int, float):
            return [_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
        return value
    if isinstance(value, str) and hint is not str:
        value = _parse_cli_value(key, value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _parse_cli_value(key: str, text: str) -> Any:
    """A value given as text (``--lr 3e-4``, ``--betas "[0.9, 0.98]"``) read as YAML."""
    try:
        return parse_yaml(text)
    except ValueError as err:
        raise ValueError(f"{key}: cannot read {text!r}: {err}") from None


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(hints))}"
        )
    kwargs = {}
    for name, raw in values.items():
        if hints[name] is ModelConfig:
            kwargs[name] = _build(ModelConfig, raw or {}, "model.")
        else:
            kwargs[name] = _coerce(prefix + name, hints[name], raw)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """``TrainConfig`` from a nested dict, type-checked; does not call ``validate``."""
    return _build(TrainConfig, dict(values), "")


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``values`` with ``{"lr": "3e-4", "model.dim": 64}`` applied (dotted keys reach ``model``)."""
    out = json.loads(json.dumps(values, default=str))
    known = flat_fields()
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(known))}")
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})
            out[head][tail] = value
        else:
            out[key] = value
    return out


def describe_source(cfg: TrainConfig) -> str:
    """One line saying which config file and preset ``cfg`` comes from (printed when a run starts)."""
    if not cfg.config_file:
        return f"task {cfg.task}: no config file (TrainConfig defaults plus the overrides given)"
    line = f"task {cfg.task}: config {cfg.config_file}"
    if cfg.preset == "mini":
        return line + " (preset mini, CPU-sized; --preset lra or --preset nystromformer for the published settings)"
    return line + (f" (preset {cfg.preset})" if cfg.preset else "")


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    task: str | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """Resolve a run's config: file (given, or ``configs/<preset>/<task>.yaml``), then overrides.

    Without ``path`` and ``task`` the config is ``TrainConfig``'s defaults plus ``overrides``. The
    file used and its preset are recorded in ``config_file`` and ``preset``.

    Returns a validated ``TrainConfig``.

    Raises:
        ValueError: a bad field (named), ``preset`` without ``task`` or together with ``path``.
        FileNotFoundError: a missing file.
    """
    overrides = dict(overrides or {})
    if preset is not None and path is not None:
        raise ValueError(f"--preset {preset} selects configs/{preset}/<task>.yaml; it cannot be used with --config")
    if preset is not None and task is None:
        have = sorted(p.stem for p in (CONFIG_ROOT / preset).glob("*.yaml"))
        raise ValueError(f"--preset {preset} needs --task (one of: {', '.join(have) or '(none)'})")
    named_by_task = path is None and task is not None
    if named_by_task:
        path = default_config_path(task, preset)  # type: ignore[arg-type]
    values = read_config_file(path) if path is not None else {}
    if task is not None and not (named_by_task and "task" in values):  # "listops-mini.yaml" may name its task
        overrides["task"] = task
    cfg = config_from_dict(apply_overrides(values, overrides))
    if path is not None:
        cfg.config_file, cfg.preset = str(path), preset_of(Path(path))
    cfg.validate()
    return cfg
