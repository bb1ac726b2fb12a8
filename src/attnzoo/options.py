"""Option dataclasses: validation helpers, dict/YAML round trips and argparse integration.

Every mechanism's options are a frozen dataclass of primitives (bool, int, float, str, tuples of
ints, ``None``). Their ``__post_init__`` calls the ``check_*`` helpers below, whose messages name
the option, the value and what is allowed. ``add_arguments`` exposes the fields as ``--prefix-field``
flags, in the style of efficient-attention's ``add_attn_specific_args`` (dest ``attn_args.window_size``);
``options_from_args`` reads them back, and unset flags stay ``None`` so ``build`` keeps the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "add_arguments",
    "check_choice",
    "check_field_types",
    "check_float",
    "check_int",
    "check_int_tuple",
    "options_from_args",
    "options_from_mapping",
    "options_to_dict",
    "parse_option_string",
]


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"option {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"option {name} must be <= {maximum}, got {value}")


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None) -> None:
    """Raise unless ``value`` is a finite real number within ``[minimum, maximum]``.

    NaN and +-inf are refused for every option: NaN passes every comparison (a bound alone would let
    it through) and no option of any mechanism means something at infinity. An option that ever
    should accept inf has to say so with its own check.

    Raises:
        TypeError: not a number (a bool is not a number here).
        ValueError: NaN, infinite, or outside the bounds; the message names the option and the value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"option {name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"option {name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"option {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"option {name} must be <= {maximum}, got {value}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"option {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_int_tuple(name: str, value: Any, *, minimum: int = 1, nonempty: bool = True) -> None:
    """Raise unless ``value`` is a tuple of ints, each >= ``minimum``."""
    if not isinstance(value, tuple) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise TypeError(f"option {name} must be a tuple of ints, got {value!r}")
    if nonempty and not value:
        raise ValueError(f"option {name} must not be empty")
    bad = [v for v in value if v < minimum]
    if bad:
        raise ValueError(f"option {name} entries must be >= {minimum}, got {value!r}")


_TYPE_WORDS = {bool: "a bool", int: "an int", float: "a number", str: "a string"}


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the primitive type ``hint`` (bool is not an int, an int is a float)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return isinstance(value, tuple) and (item is Any or all(_matches(v, item) for v in value))
    return True


def check_field_types(opts: Any) -> None:
    """Check every field of options dataclass ``opts`` against its annotation.

    Catches the values a dict, YAML file or command line most often gets wrong: ``"false"`` for a
    bool (truthy!), ``"3"`` or ``True`` for an int, a list for a tuple; and NaN or inf for a float
    (``float("nan")`` parses from ``--alpha nan``), so every float option of every mechanism is finite.

    Raises:
        TypeError: naming the option, the value and the expected type.
        ValueError: a float option that is NaN or infinite.
    """
    hints = typing.get_type_hints(type(opts))
    for field in dataclasses.fields(opts):
        hint, optional = _base_type(hints[field.name])
        value = getattr(opts, field.name)
        if value is None and optional:
            continue
        if not _matches(value, hint):
            expected = _TYPE_WORDS.get(hint, "a tuple of ints") + (" or None" if optional else "")
            raise TypeError(f"option {field.name} must be {expected}, got {value!r} ({type(value).__name__})")
        if hint is float:
            check_float(field.name, value)


def options_to_dict(opts: Any) -> dict[str, Any]:
    """The fields of an options dataclass as a plain dict (tuples become lists, for JSON/YAML)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()}


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of a dataclass field annotation such as ``int | None``."""
    hint = annotation
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    return hint, optional


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _parse_int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("[", "").replace("]", "").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _converter(cls: type, field: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(cls)
    hint, optional = _base_type(hints[field.name])
    if hint is bool:
        convert: Any = _parse_bool
    elif typing.get_origin(hint) is tuple:
        convert = _parse_int_tuple
    elif hint in (int, float, str):
        convert = hint
    else:
        raise TypeError(f"option {field.name} of {cls.__name__} has unsupported type {hint!r}")
    if not optional:
        return convert

    def maybe_none(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)

    return maybe_none


def parse_option_string(cls: type, text: str) -> tuple[str, Any]:
    """Parse ``"field=value"`` for options dataclass ``cls`` into ``(field, typed value)``.

    Raises:
        ValueError: no ``=``, an unknown field (the message lists valid ones) or a bad value.
    """
    if "=" not in text:
        raise ValueError(f"attention option must look like name=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"unknown option {key!r} for {cls.__name__}; valid options: {', '.join(sorted(fields))}")
    try:
        return key, _converter(cls, fields[key])(raw)
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise ValueError(f"option {key}: {err}") from None


def add_arguments(
    parser: argparse.ArgumentParser, name: str, *, prefix: str = "", struct_name: str = "attn_args"
) -> argparse._ArgumentGroup:
    """Add one ``--{prefix-}{field}`` flag per option of mechanism ``name`` to ``parser``.

    Each value is stored under dest ``"<struct_name>.<field>"`` (as efficient-attention's
    ``add_attn_specific_args``), or ``"<struct_name>.<prefix>.<field>"`` with a prefix, so that two
    prefixes (``enc``, ``dec``) keep their own values; :func:`options_from_args` with the same
    ``prefix`` collects them. Unset flags stay ``None``. Options of two mechanisms under one prefix
    share their flags and are refused by argparse as conflicting.

    Returns:
        The argument group holding the flags.
    """
    from attnzoo.registry import options as options_of

    cls = options_of(name)
    group = parser.add_argument_group(f"{name} attention options" + (f" (--{prefix}-*)" if prefix else ""))
    flag_prefix = f"--{prefix}-" if prefix else "--"
    for field in dataclasses.fields(cls):
        group.add_argument(
            flag_prefix + field.name.replace("_", "-"),
            dest=_dest(struct_name, prefix, field.name),
            type=_converter(cls, field),
            default=None,
            metavar=field.name.upper(),
            help=f"default: {field.default!r}",
        )
    return group


def _dest(struct_name: str, prefix: str, field: str) -> str:
    return f"{struct_name}.{prefix}.{field}" if prefix else f"{struct_name}.{field}"


def options_from_args(
    args: argparse.Namespace, *, prefix: str | None = None, struct_name: str = "attn_args"
) -> dict[str, Any]:
    """Collect the values set by :func:`add_arguments` with ``prefix`` into ``{field: value}`` (``None`` dropped).

    ``prefix=None`` reads the flags added without a prefix, or, when there are none, those of the one
    prefix that was added (so a single ``add_arguments(..., prefix="encoder-attn")`` needs no prefix here).

    Raises:
        ValueError: ``prefix`` is None and several prefixes were added (name one), or ``prefix`` was not added.
    """
    groups: dict[str, dict[str, Any]] = {}
    lead = f"{struct_name}."
    for key, value in vars(args).items():
        if key.startswith(lead):
            group, _, field = key[len(lead) :].rpartition(".")
            groups.setdefault(group, {})[field] = value
    if prefix is None:
        if "" not in groups and len(groups) > 1:
            several = ", ".join(sorted(groups))
            raise ValueError(f"options_from_args: flags of several prefixes ({several}); pass prefix=")
        prefix = "" if "" in groups or not groups else next(iter(groups))
    if groups and prefix not in groups:
        added = ", ".join(repr(g) for g in sorted(groups))
        raise ValueError(f"options_from_args: no flags were added with prefix {prefix!r} (added: {added})")
    return {field: value for field, value in groups.get(prefix, {}).items() if value is not None}


def options_from_mapping(cls: type, values: Mapping[str, Any]) -> Any:
    """Build ``cls`` from a dict such as a YAML section (lists become tuples)."""
    from attnzoo.registry import make_options

    cleaned = {k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in values.items()}
    return make_options(cls, cleaned, context=cls.__name__)
