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
import functools
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnzoo.models import ModelConfig
from attnzoo.train.config_files import CONFIG_ROOT, default_config_path, parse_yaml, preset_of, read_config_file
from attnzoo.train.optim import RUN_TASKS_BETAS, RUN_TASKS_EPS

__all__ = [
    "CONFIG_ROOT",
    "OPTIMIZERS",
    "SCHEDULES",
    "TRACKERS",
    "TrainConfig",
    "apply_overrides",
    "check_one_cycle",
    "config_from_dict",
    "default_config_path",
    "describe_source",
    "field_docs",
    "flat_fields",
    "load_config",
    "parse_yaml",
    "read_config_file",
]

SCHEDULES = ("constant", "rsqrt", "cosine", "linear", "onecycle")
OPTIMIZERS = ("adamw", "nystromformer-lra")  # attnzoo.train.optim.build_optimizer
TRACKERS = ("wandb", "mlflow")  # log_to; attnzoo.train.trackers
INTERNAL = {"internal": True}  # field metadata: set by load_config, not a flag or override


@dataclass
class TrainConfig:
    """Everything a run needs; ``out_dir`` may use ``{task}``, ``{attention}`` and ``{seed}``.

    Attributes:
        task: attnzoo.tasks name.
        task_options: the task's options, e.g. {seq_len: 512}.
        data_dir: folder of official-layout files; None = generate the data and cache it.
        cache_dir: where generated data is cached (None = the task default).
        train_size: generated train examples (None = the task default).
        dev_size: generated dev examples (None = the task default).
        test_size: generated test examples (None = the task default).
        data_seed: seed of the generated data (independent of the model seed).
        model: the model (ModelConfig); its fields are model.<name>.
        batch_size: examples per optimiser step, over all processes and accumulation steps.
        accumulate: gradient accumulation steps per optimiser step.
        sequence_parallel: ranks sharing each sequence (dilated attention; docs/sequence-parallel.md).
        steps: optimiser steps.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas [beta1, beta2].
        eps: AdamW epsilon.
        optimizer: adamw (decay on matrices only) or nystromformer-lra (run_tasks.py's AdamW: one group,
            decay on every parameter; needs betas [0.9, 0.999], eps 1e-6 and schedule onecycle).
        schedule: learning-rate schedule, one of constant, rsqrt, cosine, linear, onecycle.
        warmup_steps: linear warm-up steps (rsqrt needs >= 1; onecycle needs 2 .. steps - 1).
        grad_clip: max gradient norm; 0 = off.
        label_smoothing: label smoothing of the training cross-entropy (class targets), in [0, 1); evaluation
            scores the plain cross-entropy.
        eval_every: dev evaluation (and checkpoint) every k steps.
        eval_batches: dev batches per evaluation; 0 = the whole dev set.
        precision: fp32, bf16 or fp16 (autocast; fp16 only on CUDA).
        seed: model, dropout and data-order seed.
        device: auto, cpu, cuda or cuda:N.
        out_dir: run folder (checkpoints, metrics, results.json).
        log_every: train metrics (and a log line without a progress bar) every k steps.
        save_every: extra last.pt checkpoints every k steps; 0 = only at evaluations.
        num_workers: DataLoader worker processes (a background thread always prefetches).
        prefetch: batches kept ready ahead of the model.
        resume: "" (a fresh run; refuses a folder with a checkpoint or results.json), "auto" (continue
            out_dir's last.pt if there is one) or a checkpoint path.
        overwrite: a fresh run replaces the last.pt, best.pt and results.json in out_dir (with resume auto:
            only when there is no last.pt to continue).
        init_from: curriculum: start from this checkpoint's weights (positions resized).
        scale_options: attention options scaled with the side length under init_from.
        max_time: training-time budget in seconds (evaluations excluded); 0 = none. A run that hits it
            stops early, says so and records stopped: max_time in results.json.
        resume_with_new_settings: resume although task, data, seed or optimiser settings changed; the new
            ones apply.
        tensorboard: also log to TensorBoard when it is installed.
        log_to: more trackers, comma-separated: wandb, mlflow (each needs its package; pip extras of the
            same names).
        progress: progress bar on a terminal (without one, log lines on stdout).
        config_file: the file this config was read from ("" = none; set by load_config).
        preset: the configs/<preset>/ folder of that file ("" = none; set by load_config).
    """

    task: str = "listops-mini"
    task_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    cache_dir: str | None = None
    train_size: int | None = None
    dev_size: int | None = None
    test_size: int | None = None
    data_seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 32
    accumulate: int = 1
    sequence_parallel: int = 1
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    eval_every: int = 100
    eval_batches: int = 0
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/{task}-{attention}-s{seed}"
    log_every: int = 10
    save_every: int = 0
    num_workers: int = 0
    prefetch: int = 2
    resume: str = ""
    overwrite: bool = False
    init_from: str = ""
    scale_options: list[str] = field(default_factory=lambda: ["block_size"])
    max_time: float = 0.0
    resume_with_new_settings: bool = False
    tensorboard: bool = True
    log_to: str = ""
    progress: bool = True
    config_file: str = field(default="", metadata=INTERNAL)
    preset: str = field(default="", metadata=INTERNAL)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        self.model.validate()
        positive = ("batch_size", "accumulate", "sequence_parallel", "steps", "eval_every", "log_every", "prefetch")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("warmup_steps", "eval_batches", "save_every", "num_workers", "lr", "weight_decay", "grad_clip")
        for name in (*non_negative, "max_time"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.model.arch == "vit" and (self.init_from or self.sequence_parallel > 1):
            raise ValueError(
                f"model.arch vit supports neither init_from nor sequence_parallel > 1; got init_from "
                f"{self.init_from!r}, sequence_parallel {self.sequence_parallel}"
            )
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by accumulate ({self.accumulate})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.schedule == "rsqrt" and self.warmup_steps < 1:
            raise ValueError(f"schedule {self.schedule!r} needs warmup_steps >= 1")
        if self.schedule == "onecycle":
            check_one_cycle(self.warmup_steps, self.steps, warmup_name="warmup_steps", steps_name="steps")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        official = (list(RUN_TASKS_BETAS), RUN_TASKS_EPS, "onecycle")
        if self.optimizer == "nystromformer-lra" and (self.betas, self.eps, self.schedule) != official:
            raise ValueError(
                f"optimizer nystromformer-lra is run_tasks.py's: betas {list(RUN_TASKS_BETAS)}, eps {RUN_TASKS_EPS}, "
                f"schedule onecycle; got betas {self.betas}, eps {self.eps}, schedule {self.schedule!r}"
            )
        unknown = sorted(set(self.trackers()) - set(TRACKERS))
        if unknown:
            raise ValueError(f"log_to: unknown tracker(s) {', '.join(unknown)}; available: {', '.join(TRACKERS)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16; got {self.precision!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {self.data_dir!r} does not exist or is not a directory")
        if self.init_from and not Path(self.init_from).is_file():
            raise FileNotFoundError(f"init_from checkpoint {self.init_from!r} does not exist")

    def trackers(self) -> list[str]:
        """The tracker names in ``log_to`` (``"wandb, mlflow"`` -> ``["wandb", "mlflow"]``)."""
        return [name.strip() for name in self.log_to.split(",") if name.strip()]

    def run_dir(self) -> Path:
        """``out_dir`` with ``{task}``, ``{attention}`` and ``{seed}`` filled in."""
        return Path(self.out_dir.format(task=self.task, attention=self.model.attention, seed=self.seed))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML friendly); ``config_from_dict`` inverts it."""
        return dataclasses.asdict(self)


def check_one_cycle(warmup: int, steps: int, *, warmup_name: str = "warmup", steps_name: str = "steps") -> None:
    """Refuse a warm-up that leaves one of ``OneCycleLR``'s two phases without steps.

    ``OneCycleLR(pct_start=warmup / steps, total_steps=steps)`` interpolates phase 1 over steps
    ``0 .. warmup - 1`` and phase 2 over ``warmup - 1 .. steps - 1``; a phase of length 0 (``warmup``
    1, or ``warmup == steps``) divides by zero inside torch at the first step. So ``2 <= warmup <=
    steps - 1``. The names are the caller's (``warmup_steps``/``steps`` here, ``warmup``/
    ``num_train_steps`` in an official training config).

    Raises:
        ValueError: naming both settings, their values and the allowed range.
    """
    if not 2 <= warmup <= steps - 1:
        raise ValueError(
            f"schedule onecycle needs 2 <= {warmup_name} <= {steps_name} - 1 (its warm-up phase ends at step "
            f"{warmup_name} - 1 and its decay phase starts there; an empty phase divides by zero), got "
            f"{warmup_name} {warmup}, {steps_name} {steps}"
        )


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line doc}`` from the ``Attributes:`` section of dataclass ``cls``'s docstring.

    Each entry is ``name: text`` indented under ``Attributes:``; more-indented lines continue it.
    """
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return docs
    current = ""
    for line in lines[lines.index("Attributes:") + 1 :]:
        if not line.strip():
            break
        body = line[4:]
        if body[:1] != " " and ":" in body:
            current, _, text = body.partition(":")
            docs[current] = text.strip()
        elif current:
            docs[current] += " " + line.strip()
    return docs


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
