"""The mechanism registry: ``register`` a module class under a name, ``build`` it, list what is ``available``.

Modelled on timm's registry, with two differences: options are a typed, validated dataclass per
mechanism (not untyped ``**kwargs``), and a duplicate name is an error (timm only warns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnzoo.ops.common.sdpa import sdpa_core
from attnzoo.options import check_field_types

__all__ = ["Capabilities", "MechanismSpec", "available", "build", "get_spec", "options", "register"]


@dataclass(frozen=True)
class Capabilities:
    """What a mechanism can do; ``build`` refuses requests outside these flags.

    Attributes:
        causal: honours ``causal=True`` exactly (no information flows from later tokens).
        key_padding_mask: honours the ``(B, N)`` padding mask (pad tokens change no real output).
        cross_attention: the module attends from ``x`` to another sequence (``forward(x, mask,
            context=..., context_mask=...)``; others raise) and the functional core accepts S != N.
        exact: computes softmax attention over its pattern exactly (no random or low-rank approximation).
        deterministic: same input, same output (in eval mode).
        time: time complexity, e.g. ``"O(N*w*d)"``.
        memory: memory complexity beyond the inputs.
        pattern: name of the sparse pattern it executes through :mod:`attnzoo.sparse`, or ``None``.
        cpu_backward: trains on CPU.
        convex: each output row is a convex combination of value rows (weights >= 0 summing to 1);
            False for mixers such as PSF's signed factor products.
        bidirectional: also runs with ``causal=False`` (False for causal-only mechanisms such as causal EVA).
        compile_fullgraph: runs under ``torch.compile(module, fullgraph=True)`` on CPU with eager's outputs
            and gradients (``tests/mechanisms/test_compile.py``); a mechanism that sets it False says why
            next to its registration, and the test checks that fullgraph capture really fails.
        attn_mask: the functional core honours any SDPA ``attn_mask`` (bool, or an additive float mask,
            broadcastable to ``(B, H, N, S)``) exactly; the others take only key-padding and causal masks
            (:mod:`attnzoo.ops.common.sdpa`).
    """

    causal: bool
    key_padding_mask: bool
    cross_attention: bool
    exact: bool
    deterministic: bool
    time: str
    memory: str
    pattern: str | None = None
    cpu_backward: bool = True
    convex: bool = True
    bidirectional: bool = True
    compile_fullgraph: bool = True
    attn_mask: bool = False


@dataclass(frozen=True)
class MechanismSpec:
    """One registry entry: what ``attnzoo.available()`` returns for each mechanism."""

    name: str
    module: type[nn.Module]
    options: type
    capabilities: Capabilities
    functional: Callable[..., Any] | None
    reference: Callable[..., Any] | None
    summary: str
    flops: Callable[..., float] | None = None

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables: name, summary and every capability flag."""
        return {"name": self.name, "summary": self.summary, **dataclasses.asdict(self.capabilities)}


_REGISTRY: dict[str, MechanismSpec] = {}


def register(
    name: str,
    *,
    options: type,
    capabilities: Capabilities,
    functional: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    flops: Callable[..., float] | None = None,
    option_renames: Mapping[str, str] | None = None,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers an attention module under ``name``.

    The module's constructor must accept ``(dim, num_heads, *, causal, dropout, options)``.

    Args:
        functional: the fast functional core ``core(q, k, v, *, mask=None, causal=False, ...)`` on
            ``(B, H, N, d)`` tensors; the spec (and ``attnzoo.functional``) holds it wrapped in
            :func:`attnzoo.ops.common.sdpa.sdpa_core`: SDPA's signature, options checked with ``options``.
        reference: an independent dense reference of the same math (never the fast path itself).
        flops: ``flops(n, d, options, causal) -> float``, the analytic forward FLOP count of the
            attention core for one (batch, head) at length ``n`` and head width ``d`` (matmul
            FLOPs, 2 per multiply-add); the benchmark's "x of floor" divides by it.
        option_renames: ``{core keyword: options field}`` where the functional core names an option
            differently from the options dataclass (the only place such a correspondence is written).

    Raises:
        ValueError: if ``name`` is registered already, ``options`` is not a dataclass, ``reference`` is
            the fast path ``functional``, or a rename names no keyword of the core or no option field.
    """
    if not dataclasses.is_dataclass(options):
        raise ValueError(f"register({name!r}): options must be a dataclass type, got {options!r}")
    if reference is not None and reference is functional:
        raise ValueError(f"register({name!r}): the reference must be independent of the fast path (same function)")
    if functional is not None:
        functional = sdpa_core(
            functional, name=name, options=options, capabilities=capabilities, renames=option_renames
        )

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"attention mechanism {name!r} is registered twice ({_REGISTRY[name].module} and {cls})")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name
        _REGISTRY[name] = MechanismSpec(name, cls, options, capabilities, functional, reference, summary, flops)
        return cls

    return decorator


def get_spec(name: str) -> MechanismSpec:
    """The registry entry of ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown attention mechanism {name!r}; available: {known}") from None


def available() -> list[MechanismSpec]:
    """Every registered mechanism, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def options(name: str) -> type:
    """The options dataclass of mechanism ``name`` (e.g. ``LocalOptions``)."""
    return get_spec(name).options


def build(
    name: str,
    dim: int,
    num_heads: int,
    *,
    causal: bool = False,
    dropout: float = 0.0,
    **opts: Any,
) -> nn.Module:
    """Build attention mechanism ``name`` as an ``nn.Module`` mapping ``(B, N, dim) -> (B, N, dim)``.

    Args:
        name: a registered name (see :func:`available`).
        dim: model width; must be divisible by ``num_heads``.
        num_heads: number of heads H; head width d = dim // H.
        causal: token i attends only to tokens j <= i. Raises if the mechanism cannot honour it.
        dropout: attention-probability dropout (training only) where the mechanism has probabilities.
        **opts: fields of the mechanism's options dataclass (``attnzoo.options(name)``); ``None`` values
            are dropped so unset command-line flags keep the defaults. ``options=`` may pass a ready
            dataclass instance instead.

    Returns:
        The module; call it as ``module(x, mask=None)`` with ``x: (B, N, dim)`` and ``mask: (B, N)`` bool,
        True = real token.

    Raises:
        ValueError: unknown name or option, invalid option value, ``dim`` not divisible by ``num_heads``,
            or ``causal=True`` for a mechanism that cannot honour it (the module's constructor checks
            its registered capabilities, so a module built directly refuses the same).
    """
    spec = get_spec(name)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    ready = opts.pop("options", None)
    if ready is not None:
        if opts:
            raise ValueError(f"pass either options= or keyword options to build({name!r}), not both")
        if not isinstance(ready, spec.options):
            raise TypeError(f"options for {name!r} must be {spec.options.__name__}, got {type(ready).__name__}")
        parsed = ready
    else:
        parsed = make_options(spec.options, {k: v for k, v in opts.items() if v is not None}, context=name)
    check_field_types(parsed)
    return spec.module(dim, num_heads, causal=causal, dropout=float(dropout), options=parsed)


def make_options(cls: type, values: Mapping[str, Any], *, context: str = "") -> Any:
    """Instantiate options dataclass ``cls`` from ``values``, rejecting unknown field names.

    Raises:
        ValueError: an unknown option; the message lists the valid ones.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        where = f" for {context!r}" if context else ""
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}{where}; valid options: {', '.join(sorted(fields)) or '(none)'}"
        )
    return cls(**values)
