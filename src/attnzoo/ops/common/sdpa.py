"""``F.scaled_dot_product_attention``'s calling convention for every functional core.

A core is ``core(q, k, v, *, mask=None, causal=False, <its options>) -> out`` on ``(B, H, N, d)``
tensors. :func:`sdpa_core` wraps one into ``fn(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, scale=None, enable_gqa=False, *, mask=None, causal=None, <its options>)``, the
signature of SDPA plus the core's own keywords, and maps each SDPA argument onto what the mechanism
can honour or refuses it with a message naming the mechanism, the argument and what is supported:

- inputs ``(..., H, L, E)``, ``(..., H, S, E)``, ``(..., H, S, Ev)``: the leading dims are flattened into
  the batch (``(H, L, E)`` and ``(L, E)`` work too); the output is ``(..., H, L, Ev)``.
- ``attn_mask`` broadcastable to ``(..., H, L, S)``: passed whole to a core whose mechanism has the
  ``attn_mask`` capability (exact softmax over all keys); for the others a bool mask (or a float mask of
  only 0 and -inf) must be a key-padding mask, equal for every head and every query row that sees a
  key, optionally also causal (top-left aligned, as SDPA's ``is_causal``): it becomes the core's
  ``mask=(B, S)`` and ``causal=True``, and rows that see no key give 0. Anything else raises.
- ``is_causal`` is the core's ``causal`` (``causal=`` still works; contradicting values raise).
- ``scale`` and ``dropout_p`` go to a core that takes them; a core without them refuses a value.
- ``enable_gqa`` repeats each key/value head for its group of query heads, as SDPA.
- under autocast, fp32 inputs are cast to the autocast dtype first, as autocast does for SDPA.

The core's options that are fields of the mechanism's options dataclass (same name, a rename given at
registration, or ``grid=(h, w)`` for ``attn_2d`` / ``image_height`` / ``image_width``) are checked by
building that dataclass (once per distinct set of values), so a bad value gets the module's error message.
Eager calls only: under ``torch.compile`` the check is skipped (dynamo cannot trace the dataclass's type
hints), and reading an ``attn_mask``'s pattern is data-dependent, so ``fullgraph=True`` needs ``mask=`` /
``is_causal`` instead of a mask tensor for the mechanisms without the ``attn_mask`` capability.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnzoo.ops.common.checks import check_padding_mask
from attnzoo.ops.common.masks import zero_masked_rows
from attnzoo.ops.common.precision import result_dtype
from attnzoo.options import check_field_types

if TYPE_CHECKING:
    from attnzoo.registry import Capabilities

__all__ = ["SDPA_ARGUMENTS", "reduce_attn_mask", "sdpa_core"]

SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SET_PER_CALL = ("mask", "causal", "scale", "dropout_p", "attn_mask")  # core keywords the adapter fills in itself
_GRID_FIELDS = ("attn_2d", "image_height", "image_width")


@dataclasses.dataclass(frozen=True)
class _OptionCheck:
    """Which of a core's keywords are fields of the options dataclass ``cls``, and their defaults."""

    cls: type
    fields: dict[str, str]  # core keyword -> dataclass field
    defaults: dict[str, Any]  # core keyword -> the core's default
    grid: bool  # the core's ``grid=(h, w)`` stands for attn_2d / image_height / image_width

    def check(self, given: Mapping[str, Any]) -> None:
        """Build ``cls`` from the values the core will run with; raises the module's error for a bad one."""
        values: dict[str, Any] = {}
        for key, value in {**self.defaults, **given}.items():
            if value is None:
                continue
            if key == "grid" and self.grid:
                if not (isinstance(value, tuple) and len(value) == 2):
                    raise ValueError(f"option grid must be a (height, width) tuple, got {value!r}")
                values.update(attn_2d=True, image_height=value[0], image_width=value[1])
            elif key in self.fields:
                values[self.fields[key]] = value
        try:
            _check_options(self.cls, values)
        except (TypeError, ValueError) as err:
            renamed = [f"{f} is the core's {kw}" for kw, f in self.fields.items() if kw != f and f in str(err)]
            if renamed:
                raise type(err)(f"{err} ({'; '.join(renamed)})") from None
            raise


_CHECKED: set[tuple[type, str]] = set()  # (options class, repr of the values) that passed


def _check_options(cls: type, values: dict[str, Any]) -> None:
    """Build options dataclass ``cls`` from ``values``; remembered by ``repr`` (which tells ``True``, ``1`` and
    ``1.0`` apart), as building one reads its type hints each time."""
    key = (cls, repr(sorted(values.items())))
    if key in _CHECKED:
        return
    check_field_types(cls(**values))
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED.add(key)


def _option_check(
    name: str, core_keywords: Mapping[str, inspect.Parameter], options: type, renames: Mapping[str, str]
) -> _OptionCheck:
    """Match ``core_keywords`` to the fields of ``options`` (same name, ``renames``, or ``grid``)."""
    fields = {f.name for f in dataclasses.fields(options)}
    for keyword, field in renames.items():
        if keyword not in core_keywords or field not in fields:
            raise ValueError(
                f"{name!r}: option rename {keyword!r} -> {field!r} needs a keyword of the core and a field of "
                f"{options.__name__}"
            )
    mapped = {kw: renames.get(kw, kw) for kw in core_keywords if renames.get(kw, kw) in fields}
    grid = "grid" in core_keywords and set(_GRID_FIELDS) <= fields
    defaults = {kw: core_keywords[kw].default for kw in (*mapped, *(["grid"] if grid else []))}
    return _OptionCheck(options, mapped, defaults, grid)


def _padding_takes_part(opts: Mapping[str, Any]) -> bool:
    """Whether an official-compatibility option asks for padded keys' content to take part (ra E9, LARA 2D)."""
    return any(opts.get(key) not in (None, False, "none") for key in ("compat", "count_padding"))


def _causal_request(name: str, is_causal: bool, causal: bool | None) -> bool:
    """One causal flag from SDPA's ``is_causal`` and the core's ``causal`` keyword (None = not given)."""
    if causal is None:
        return bool(is_causal)
    if is_causal and not causal:
        raise ValueError(f"attention {name!r}: is_causal=True and causal=False contradict each other; give one")
    return bool(causal)


def _to_bhnd(x: Tensor, label: str) -> Tensor:
    """``(..., H, L, E)`` -> ``(B, H, L, E)`` with B the product of the leading dims (``(L, E)``: B = H = 1)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{label} must have shape (..., L, E) (at least 2 dims), got {tuple(x.shape)}")
    if x.dim() == 2:
        return x[None, None]
    return x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])


def _group_heads(q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool) -> tuple[Tensor, Tensor]:
    """``k, v: (B, Hk, S, *)`` with each head repeated for its group of ``q``'s H heads (``enable_gqa``, as SDPA)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads == kv_heads:
        return k, v
    if not enable_gqa:
        raise ValueError(f"query has {heads} heads, key and value {kv_heads}; pass enable_gqa=True for grouped heads")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"enable_gqa: the query heads ({heads}) must be a multiple of the key/value heads ({kv_heads})"
        )
    return k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)


def _broadcast_mask(attn_mask: Tensor, query: Tensor, q: Tensor, length: int) -> Tensor:
    """``attn_mask`` broadcastable to ``(..., H, L, S)`` as ``(B, H or 1, L or 1, S or 1)``."""
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = attend) or an additive float mask, got {attn_mask.dtype}")
    if attn_mask.device != q.device:
        raise TypeError(f"attn_mask is on {attn_mask.device} but the inputs are on {q.device}")
    lead = tuple(query.shape[:-3]) if query.dim() >= 3 else ()
    target = (*lead, q.shape[1], q.shape[2], length)
    if attn_mask.dim() > len(target) or any(
        size not in (1, want) for size, want in zip(attn_mask.shape[::-1], target[::-1], strict=False)
    ):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (..., H, L, S) = {target}")
    m = attn_mask.reshape((1,) * (len(target) - attn_mask.dim()) + tuple(attn_mask.shape))
    return m.expand(*lead, *m.shape[len(lead) :]).reshape(q.shape[0], *m.shape[len(lead) :])


def reduce_attn_mask(name: str, attn_mask: Tensor) -> tuple[Tensor | None, bool, Tensor | None]:
    """A mask ``(B, H or 1, L or 1, S)`` as ``(padding (B, S) or None, causal, empty rows (B, 1, L, 1) or None)``.

    The mask must not depend on the head, and every query row must either see no key or see exactly
    the keys of one padding mask (those j <= i when causal: SDPA's top-left ``tril``, L == S). Float
    masks of only 0 and -inf are read as bool. ``empty`` marks the rows that see no key (their output
    is set to 0); ``padding`` is None when every key takes part.

    Raises:
        ValueError: a mask of another form, naming the mechanism ``name`` and what it supports.
    """
    supported = (
        f"attention {name!r} takes a key-padding attn_mask (the same for every head and query row, "
        "optionally causal), not"
    )
    if attn_mask.is_floating_point():
        if not bool((torch.isneginf(attn_mask) | (attn_mask == 0)).all()):
            raise ValueError(
                f"{supported} an additive float mask with values other than 0 and -inf (only mechanisms with the "
                "attn_mask capability, e.g. softmax, add a float mask exactly)"
            )
        attn_mask = attn_mask == 0
    if attn_mask.shape[1] > 1:
        if not bool((attn_mask == attn_mask[:, :1]).all()):
            raise ValueError(f"{supported} a mask that differs between heads")
        attn_mask = attn_mask[:, :1]
    b, _, rows, length = attn_mask.shape
    if rows == 1:
        pad = attn_mask[:, 0, 0]
        return (None if bool(pad.all()) else pad), False, None
    pad = attn_mask.any(-2)[:, 0]  # (B, S): the keys some row sees
    seen = attn_mask.any(-1, keepdim=True)  # (B, 1, L, 1)
    plain = pad[:, None, None, :] & seen
    causal = not bool((attn_mask == plain).all())
    if causal:
        tril = torch.ones(rows, length, dtype=torch.bool, device=attn_mask.device).tril_()
        if rows != length or not bool((attn_mask == (plain & tril)).all()):
            raise ValueError(f"{supported} a mask of shape {(b, 1, rows, length)} with another pattern")
    empty = None if bool(seen.all()) else ~seen
    return (None if bool(pad.all()) else pad), causal, empty


def sdpa_core(
    core: Callable[..., Tensor],
    *,
    name: str,
    options: type,
    capabilities: Capabilities,
    renames: Mapping[str, str] | None = None,
) -> Callable[..., Tensor]:
    """``core`` with SDPA's signature and the options checks of mechanism ``name``.

    Args:
        core: ``core(q, k, v, *, mask=None, causal=False, ...)`` on ``(B, H, N, d)``.
        name: the mechanism's registry name (used in messages).
        options: its options dataclass; the core's keywords that are its fields are checked with it.
        capabilities: its registry :class:`~attnzoo.registry.Capabilities` (``causal``,
            ``bidirectional``, ``key_padding_mask``, ``attn_mask``).
        renames: ``{core keyword: options field}`` where the two names differ.

    Returns:
        ``fn(query (..., H, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev), attn_mask=None, dropout_p=0.0,
        is_causal=False, scale=None, enable_gqa=False, *, mask=None, causal=None, **core options)
        -> (..., H, L, Ev)``, with ``core``'s name and docstring and a signature listing its keywords;
        ``mask`` is the core's ``(B, S)`` padding mask (B = the product of the leading dims) and is
        combined with ``attn_mask``.

    Raises:
        ValueError: (here) a rename that names no keyword of ``core`` or no field of ``options``.
    """
    params = inspect.signature(core).parameters
    keywords = {p.name: p for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    check = _option_check(name, keywords, options, renames or {})
    passed = sorted(set(keywords) - set(_SET_PER_CALL))
    takes_scale, takes_dropout = "scale" in keywords, "dropout_p" in keywords

    @functools.wraps(core)
    def attention(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        *,
        mask: Tensor | None = None,
        causal: bool | None = None,
        **opts: Any,
    ) -> Tensor:
        unknown = sorted(set(opts) - set(passed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for the {name!r} functional core; "
                f"valid options: {', '.join(passed) or '(none)'}"
            )
        if not torch.compiler.is_compiling():  # dynamo cannot trace the dataclass's type hints; eager calls check
            check.check(opts)
        want_causal = _causal_request(name, is_causal, causal)
        if scale is not None and not takes_scale:
            raise ValueError(f"attention {name!r} has no softmax scale to set; pass scale=None, got scale={scale}")
        if dropout_p and not takes_dropout:
            raise ValueError(
                f"attention {name!r} has no attention weights to drop; pass dropout_p=0.0, got {dropout_p}"
            )
        q, k, v = _to_bhnd(query, "query"), _to_bhnd(key, "key"), _to_bhnd(value, "value")
        if q.dtype == k.dtype == v.dtype and result_dtype(q) != q.dtype:  # autocast: its dtype, as SDPA's inputs
            q, k, v = q.to(result_dtype(q)), k.to(result_dtype(q)), v.to(result_dtype(q))
        k, v = _group_heads(q, k, v, enable_gqa)
        call: dict[str, Any] = dict(opts)
        if scale is not None:
            call["scale"] = scale
        if takes_dropout:
            call["dropout_p"] = dropout_p
        empty = None
        if attn_mask is not None:
            full = _broadcast_mask(attn_mask, query, q, k.shape[2])
            if capabilities.attn_mask:
                call["attn_mask"] = full
            else:
                pad, masked_causal, empty = reduce_attn_mask(name, full.expand(*full.shape[:-1], k.shape[2]))
                want_causal = want_causal or masked_causal
                if pad is not None:
                    pad = pad.expand(q.shape[0], -1)
                    mask = pad if mask is None else check_padding_mask(mask, *pad.shape, q.device, axis="S") & pad
        if want_causal and not capabilities.causal:
            raise ValueError(f"attention {name!r} cannot be causal (is_causal=True, causal=True or a causal attn_mask)")
        if not want_causal and not capabilities.bidirectional:
            raise ValueError(f"attention {name!r} is causal only; pass is_causal=True")
        if mask is not None and not _padding_takes_part(opts):
            axis = "N" if k.shape[2] == q.shape[2] else "S"
            mask = check_padding_mask(mask, k.shape[0], k.shape[2], k.device, axis=axis)
            k, v = zero_masked_rows(k, mask), zero_masked_rows(v, mask)
        out = core(q, k, v, mask=mask, causal=want_causal, **call)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        return out.reshape(*query.shape[:-1], out.shape[-1])

    attention.__signature__ = _signature(keywords)  # type: ignore[attr-defined]
    attention.__doc__ = f"{core.__doc__ or ''}\n\nCalled as ``attnzoo.functional.{name}``: {_CALLING}"
    return attention


_CALLING = """SDPA's signature ``(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, scale=None, enable_gqa=False)`` on ``(..., H, L, E)`` inputs, plus the keywords
above (``mask`` is ``(B, S)`` with B the product of the leading dims, combined with ``attn_mask``;
``causal`` is ``is_causal``). See :mod:`attnzoo.ops.common.sdpa` for what each mechanism honours."""


def _signature(keywords: Mapping[str, inspect.Parameter]) -> inspect.Signature:
    """SDPA's parameters, then ``mask``, ``causal`` and the core's other keywords."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = (inspect.Parameter.empty,) * 3 + (None, 0.0, False, None, False)
    sdpa = [inspect.Parameter(n, kind, default=d) for n, d in zip(SDPA_ARGUMENTS, defaults, strict=True)]
    own = [
        inspect.Parameter("mask", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("causal", inspect.Parameter.KEYWORD_ONLY, default=None),
        *(p for n, p in keywords.items() if n not in _SET_PER_CALL),
    ]
    return inspect.Signature([*sdpa, *own], return_annotation=Tensor)
