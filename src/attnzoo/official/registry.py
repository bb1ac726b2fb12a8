"""``from_official``: build the attnzoo module that computes what an official implementation computes.

Each mechanism module declares its official counterparts next to itself with :func:`register_official`
(one entry per ``(source, official name)``): the official constructor arguments with their official
defaults, a function turning them into ``attnzoo.build`` keyword options (switching on the
compatibility options that matching needs), and optionally a state-dict converter from official
parameter names. ``from_official`` validates the arguments, builds, and loads strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["OfficialEntry", "from_official", "official_entries", "register_official", "resolve_official"]


@dataclass(frozen=True)
class OfficialEntry:
    """One official implementation that attnzoo reproduces.

    Attributes:
        source: the official code base, e.g. ``"efficient-attention"``, ``"torchscale"``.
        name: the official mechanism name in that code base (its factory key or class).
        mechanism: the attnzoo registry name it maps to.
        defaults: every official constructor argument, under its official name, with its official default.
        options: ``options(args, causal) -> dict`` of ``attnzoo.build`` keyword options for the merged args.
        convert: ``convert(state_dict, args) -> state_dict`` from official to attnzoo parameter names.
        notes: one line for the docs' mapping table (what maps to what, which compatibility options).
    """

    source: str
    name: str
    mechanism: str
    defaults: Mapping[str, Any]
    options: Callable[[dict[str, Any], bool], dict[str, Any]]
    convert: Callable[[dict[str, Tensor], dict[str, Any]], dict[str, Tensor]] | None = None
    notes: str = ""


_OFFICIAL: dict[tuple[str, str], OfficialEntry] = {}


def register_official(entry: OfficialEntry) -> OfficialEntry:
    """Add ``entry``; a second entry for the same ``(source, name)`` is an error."""
    key = (entry.source, entry.name)
    if key in _OFFICIAL:
        raise ValueError(f"official entry {key} is registered twice")
    _OFFICIAL[key] = entry
    return entry


def official_entries() -> list[OfficialEntry]:
    """Every registered official entry, sorted by (source, name)."""
    return [_OFFICIAL[key] for key in sorted(_OFFICIAL)]


def _entry(source: str, name: str) -> OfficialEntry:
    try:
        return _OFFICIAL[(source, name)]
    except KeyError:
        sources = sorted({s for s, _ in _OFFICIAL})
        if source not in sources:
            raise ValueError(f"unknown official source {source!r}; known sources: {', '.join(sources)}") from None
        names = sorted(n for s, n in _OFFICIAL if s == source)
        raise ValueError(f"{source} has no mechanism {name!r} here; known: {', '.join(names)}") from None


def resolve_official(
    source: str, name: str, args: Mapping[str, Any] | None = None
) -> tuple[OfficialEntry, dict[str, Any]]:
    """The entry of ``(source, name)`` and ``args`` merged over its official defaults.

    Raises:
        ValueError: unknown source or name, or an argument the entry does not know (named).
    """
    entry = _entry(source, name)
    given = dict(args or {})
    unknown = sorted(set(given) - set(entry.defaults))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)} for {source} {name!r}; "
            f"official arguments: {', '.join(sorted(entry.defaults)) or '(none)'}"
        )
    return entry, {**entry.defaults, **given}


def from_official(
    source: str,
    name: str,
    *,
    dim: int,
    num_heads: int,
    causal: bool = False,
    args: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """Build the attnzoo module equal to official mechanism ``name`` of ``source`` (and load its weights).

    Contract: in eval mode and fp32, ``module(x, mask)`` with ``x: (B, N, dim)`` (a 2D grid flattened
    row-major) and ``mask: (B, N)`` (True = real token) equals the official module's forward on the same
    weights and input on every real row to about 1e-5 relative.

    Args:
        source: official code base (see :func:`official_entries`).
        name: official mechanism name within ``source``.
        dim, num_heads: model width and heads, as given to the official module.
        causal: the official causal flag.
        args: official constructor arguments under their official names; missing ones take the
            official defaults, unknown ones are an error.
        state_dict: the official module's ``state_dict()``; loaded strictly when given.

    Returns:
        The module (in training mode, like a freshly built one).

    Raises:
        ValueError: unknown source, name or argument, or weights that do not fit (named).
    """
    from attnzoo.official.weights import load_converted
    from attnzoo.registry import build, make_options
    from attnzoo.registry import options as options_of

    entry, merged = resolve_official(source, name, args)
    # a ready options instance: build() drops None keywords (unset CLI flags), an official mapping means them
    ready = make_options(options_of(entry.mechanism), entry.options(merged, causal), context=entry.mechanism)
    module = build(entry.mechanism, dim, num_heads, causal=causal, options=ready)
    if state_dict is not None:
        converted = dict(state_dict) if entry.convert is None else entry.convert(dict(state_dict), merged)
        load_converted(module, converted, strict=True)
    return module
