"""Sub-commands ``attnzoo train``, ``attnzoo compare`` and ``attnzoo attention-map``.

Every ``TrainConfig`` field is also a flag (``--lr``, ``--batch-size``, ``--model.num-heads``,
``--task-options '{seq_len: 512}'``; a bool flag alone means true: ``--resume-with-new-settings``),
as is ``--set key=value`` for any of them. Each flag's help (``attnzoo train --help``) is the field's
entry in the ``Attributes:`` section of ``TrainConfig``'s or ``ModelConfig``'s docstring, with its
type and default. Without ``--config`` or ``--task`` the task is
``TrainConfig``'s default (listops-mini) and its file is used, as for ``--task listops-mini``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import attnzoo
from attnzoo.models import ModelConfig
from attnzoo.options import parse_option_string
from attnzoo.train.config import TrainConfig, field_docs, flat_fields, load_config

__all__ = ["attention_map_command", "compare_command", "register_commands", "train_command"]

PRESETS = ("mini", "lra", "nystromformer", "evit")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="config file (.yaml, .toml or .json); default: the task's file"
    )
    parser.add_argument(
        "--preset", choices=PRESETS, help="use configs/<preset>/<task>.yaml (needs --task; default: mini/, else lra/)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set model.dim=128 (repeatable)",
    )
    group = parser.add_argument_group(
        "config fields",
        "each overrides the config file; the defaults shown are TrainConfig's and ModelConfig's, which a "
        "config file (the task's, by default) may change",
    )
    for name, hint in flat_fields().items():
        if name in skip:
            continue
        if hint is bool:  # "--progress" alone means true; "--progress false" also works
            extra: dict[str, Any] = {"nargs": "?", "const": "true"}
        else:
            extra = {}
        group.add_argument(
            _flag(name), dest=f"cfg:{name}", metavar=type_word(hint), default=None, help=_field_help(name), **extra
        )


def type_word(hint: Any) -> str:
    """The metavar of a config field's flag: ``INT``, ``FLOAT``, ``TEXT``, ``BOOL``, ``LIST``, ``MAPPING``,
    with ``|none`` for an optional field (lists and mappings are written in YAML: ``"[0.9, 0.98]"``)."""
    words = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL", list: "LIST", dict: "MAPPING"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint):
        return type_word(args[0]) + "|none"
    return words[typing.get_origin(hint) or hint]


def _field_help(name: str) -> str:
    """``"<doc> (default: <value>)"`` for config field ``name`` (``"lr"``, ``"model.dim"``)."""
    cls, field_name = (ModelConfig, name[6:]) if name.startswith("model.") else (TrainConfig, name)
    field = {f.name: f for f in dataclasses.fields(cls)}[field_name]
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if default is None:
        shown = "none"
    else:
        shown = json.dumps(default) if isinstance(default, (bool, list, dict)) or default == "" else str(default)
    # argparse formats help with %: a literal percent sign must be doubled
    return f"{field_docs(cls)[field_name]} (default: {shown})".replace("%", "%%")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{field: raw value}`` from ``--set`` and the generated flags."""
    found: dict[str, Any] = {}
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        found[key.strip().replace("-", "_")] = value
    for key, value in vars(args).items():
        if key.startswith("cfg:") and value is not None:
            found[key[4:]] = value
    return found


def _attention_options(name: str, items: list[str]) -> dict[str, Any]:
    """``["window_size=16"] -> {"window_size": 16}``, typed and checked against ``name``'s options."""
    cls = attnzoo.options(name)
    return dict(parse_option_string(cls, item) for item in items)


def _seed_workers(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 1, got {text!r}")
    return int(text)


def _add_seed_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed-workers",
        type=_seed_workers,
        default="auto",
        metavar="N|auto",
        help="seeds trained at once in separate processes, each with its share of the threads (auto: one per "
        "seed up to the CPU cores, on CPU outside torchrun; 1 = one after another with all threads)",
    )


def train_command(args: argparse.Namespace) -> int:
    """``attnzoo train``: train one configuration (or ``--seeds K`` of them, or ``--profile-overhead``)."""
    from attnzoo.train.runs import train_seeds

    overrides = _overrides(args)
    if args.attention:
        overrides["model.attention"] = args.attention
    task = overrides.pop("task", None)
    if task is None and args.config is None and args.preset is None:
        task = TrainConfig.task  # the default task, through its config file (a preset alone is an error)
    cfg = load_config(args.config, overrides, task=task, preset=args.preset)
    if args.attention_option:
        options = {**cfg.model.attention_options, **_attention_options(cfg.model.attention, args.attention_option)}
        cfg.model.attention_options = options
        cfg.validate()
    if args.profile_overhead:
        from attnzoo.train.overhead import measure_overhead

        print(json.dumps(measure_overhead(cfg, steps=args.profile_steps), indent=2))
        return 0
    summary = train_seeds(cfg, args.seeds, workers=args.seed_workers)
    keys = ("accuracy", "exact_match", "dev_accuracy", "loss", "steps_per_s", "tokens_per_s", "images_per_s")
    keys += ("peak_memory_mb",)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 prints
        brief = {k: summary[f"{k}_mean"] for k in keys if f"{k}_mean" in summary}
        brief.update({f"{k}_std": summary[f"{k}_std"] for k in ("accuracy",) if args.seeds > 1})
        print(
            json.dumps(
                {
                    "task": cfg.task,
                    "attention": cfg.model.attention,
                    "seeds": summary["seeds"],
                    "parameters": summary["parameters"],
                    **brief,
                },
                indent=2,
            )
        )
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``attnzoo compare``: the leaderboard job."""
    from attnzoo.train.compare import DEFAULT_TASK, compare

    per_mechanism: dict[str, dict[str, Any]] = {}
    for item in args.attention_option:
        name, sep, option = item.partition(":")
        if not sep:
            raise ValueError(f"--attention-option for compare is NAME:KEY=VALUE, got {item!r}")
        per_mechanism.setdefault(name, {}).update(_attention_options(name, [option]))
    overrides = _overrides(args)
    task = overrides.pop("task", None) or DEFAULT_TASK
    out_dir = Path((overrides.pop("out_dir", None) or "runs/compare-{task}").format(task=task))
    compare(
        task,
        args.attention,
        out_dir=out_dir,
        overrides=overrides,
        attention_options=per_mechanism,
        config=args.config,
        preset=args.preset,
        seeds=args.seeds,
        plot=not args.no_plot,
        workers=args.seed_workers,
    )
    print((out_dir / "compare.md").read_text(encoding="utf-8"))
    return 0


def attention_map_command(args: argparse.Namespace) -> int:
    """``attnzoo attention-map``: draw a trained model's attention weights on one example."""
    from attnzoo.viz.attention_map import draw_attention_map

    try:
        info = draw_attention_map(
            args.checkpoint, args.index, args.out, split=args.split, heads=args.heads, data_dir=args.data_dir
        )
    except ImportError as err:
        print(f"attnzoo attention-map: {err}", file=sys.stderr)
        return 1
    print(json.dumps({**info, "out": args.out}))
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``train``, ``compare`` and ``attention-map`` to the ``attnzoo`` parser."""
    train = subparsers.add_parser("train", help="train a model on a task", description=train_command.__doc__)
    train.add_argument("--attention", help="attention mechanism (shorthand for --model.attention)")
    train.add_argument(
        "--attention-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the mechanism, e.g. window_size=16 (repeatable)",
    )
    train.add_argument("--seeds", type=int, default=1, help="train this many seeds; report mean and std")
    _add_seed_workers(train)
    train.add_argument(
        "--profile-overhead",
        action="store_true",
        help="measure raw fwd+bwd steps/s against the full harness and print both",
    )
    train.add_argument("--profile-steps", type=int, default=60, help="timed steps for --profile-overhead")
    _add_config_flags(train)
    train.set_defaults(func=train_command)

    comp = subparsers.add_parser(
        "compare", help="train several mechanisms under one budget; table + plot", description=compare_command.__doc__
    )
    comp.add_argument(
        "--attention",
        nargs="+",
        default=None,
        metavar="NAME",
        help="mechanisms, or 'all' (every registered one that can run the task); default: "
        "softmax local dilated performer linear nystrom linformer none",
    )
    comp.add_argument(
        "--attention-option",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="an option for one mechanism, e.g. local:window_size=16 (repeatable)",
    )
    comp.add_argument("--seeds", type=int, default=2, help="seeds per mechanism (mean ± std in the table)")
    _add_seed_workers(comp)
    comp.add_argument("--no-plot", action="store_true", help="skip compare.png")
    _add_config_flags(comp, skip=("model.attention", "model.attention_options"))
    comp.set_defaults(func=compare_command)

    amap = subparsers.add_parser(
        "attention-map",
        help="plot a trained model's attention weights on one example",
        description=attention_map_command.__doc__,
    )
    amap.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by attnzoo train")
    amap.add_argument("--index", type=int, required=True, help="example index in the split")
    amap.add_argument("--out", required=True, help="output image (.png, .svg, .pdf)")
    amap.add_argument("--split", default="dev", choices=("train", "dev", "test"))
    amap.add_argument("--heads", default="all", choices=("all", "mean"), help="one panel per head, or their mean")
    amap.add_argument("--data-dir", default=None, help="where the task's files are, if not where they were in training")
    amap.set_defaults(func=attention_map_command)
