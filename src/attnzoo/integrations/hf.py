"""Run attnzoo mechanisms inside Hugging Face ``transformers`` models.

``use_attnzoo(model, "local", window_size=64)`` registers one attention function and one mask
function under a fresh implementation name (``AttentionInterface.register`` and
``AttentionMaskInterface.register``) and switches ``model`` to it with ``set_attn_implementation``.

What the two functions do:

* The mask function replaces HF's dense mask: it accepts only the two patterns attnzoo can
  honour exactly, HF's plain causal and plain bidirectional mask functions, over a sequence
  attending to itself (no KV-cache offset), and returns an :class:`HFMask`, the ``(B, N)`` padding
  mask (True = real token, the polarity of both libraries) and the causal flag. Sliding-window,
  packed-sequence, and custom (``or_mask``/``and_mask``) patterns, and HF KV-cache decoding steps,
  raise ``ValueError`` instead of being dropped.
* The attention function gets ``q: (B, H, N, d)`` and ``k, v: (B, H_kv, N, d)`` after RoPE, repeats
  the key/value heads for GQA, checks that the mechanism can honour causality and the scaling the
  model asks for, calls the mechanism's functional core (``attnzoo.get_spec(name).functional``) with
  the options given to ``use_attnzoo``, zeroes padded query rows, and returns ``(B, N, H, d)``.

Only options the functional core takes are accepted; options that need the mechanism module's
learned parameters (e.g. ``local``'s ``use_rpe``) must stay at their defaults here. An option left
``None`` where the core has a concrete default takes the core's default: ``performer``'s and ``ra``'s
``seed=None`` (a fresh draw held by a module) becomes the core's fixed ``seed=0``, since there is no
module to hold a draw. Needs the optional extra ``attnzoo[hf]``.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

from attnzoo.ops.common import zero_masked_rows
from attnzoo.registry import MechanismSpec, get_spec, make_options

__all__ = ["HFMask", "attnzoo_mask", "make_attention_function", "use_attnzoo"]

_OWNED = ("mask", "causal", "scale", "dropout_p")  # functional arguments the adapter sets per call
_MATH_KWARGS = ("softcap", "position_bias", "sliding_window", "s_aux", "sinks")  # HF extras that change the math
_names = itertools.count()


@dataclass(frozen=True)
class HFMask:
    """What the attnzoo mask function hands to the attention function.

    Attributes:
        padding: ``(B, N)`` bool, True = real token, or ``None`` when every token is real.
        causal: whether token i may use only tokens j <= i.
    """

    padding: Tensor | None
    causal: bool


def attnzoo_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    mask_function: Callable[..., Any] = causal_mask_function,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> HFMask:
    """HF mask-interface function: the ``(B, N)`` padding mask and causal flag instead of a dense mask.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset: HF's mask geometry; attnzoo needs
            ``q_length == kv_length`` and zero offsets (a sequence attending to itself).
        mask_function: HF's ``mask_mod``; only ``causal_mask_function`` and ``bidirectional_mask_function``.
        attention_mask: HF's 2D padding mask ``(B, kv_length)`` (True/1 = real token) or ``None``.

    Raises:
        ValueError: a pattern, offset or mask attnzoo cannot express.
    """
    if mask_function is causal_mask_function:
        causal = True
    elif mask_function is bidirectional_mask_function:
        causal = False
    else:
        name = getattr(mask_function, "__qualname__", repr(mask_function))
        raise ValueError(
            f"attnzoo's HF adapter honours plain causal or bidirectional masks (plus padding) only; the model "
            f"asks for mask function {name} (sliding window, packed sequences or a custom or/and mask)"
        )
    if not isinstance(q_offset, int) or not isinstance(kv_offset, int) or q_offset or kv_offset:
        raise ValueError(
            f"attnzoo's HF adapter runs whole sequences only (q_offset={q_offset}, kv_offset={kv_offset}); HF "
            "KV-cache decoding is not supported: call the model with use_cache=False"
        )
    if q_length != kv_length:
        raise ValueError(f"attnzoo's HF adapter needs q_length == kv_length, got {q_length} and {kv_length}")
    if attention_mask is None:
        return HFMask(None, causal)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch_size, kv_length):
        raise ValueError(
            f"attnzoo's HF adapter takes a 2D padding mask (B, N) = ({batch_size}, {kv_length}), "
            f"got {tuple(attention_mask.shape)}"
        )
    return HFMask(attention_mask.to(torch.bool), causal)


@dataclass(frozen=True)
class _Setup:
    """A mechanism bound to the functional keyword options ``use_attnzoo`` received."""

    spec: MechanismSpec
    kwargs: dict[str, Any]
    takes: frozenset[str]


def _bind(name: str, opts: dict[str, Any]) -> _Setup:
    """Validate ``opts`` with the mechanism's options dataclass and keep those its functional core takes."""
    spec = get_spec(name)
    if spec.functional is None:
        raise ValueError(f"attention {name!r} has no functional core to run inside HF models")
    params = inspect.signature(inspect.unwrap(spec.functional)).parameters  # the core itself, not its SDPA form
    options = make_options(spec.options, opts, context=name)
    defaults = spec.options()
    kwargs: dict[str, Any] = {}
    for field in fields(options):
        value = getattr(options, field.name)
        if field.name in params and field.name not in _OWNED:
            if value is not None or params[field.name].default in (None, inspect.Parameter.empty):
                kwargs[field.name] = value
        elif value != getattr(defaults, field.name):
            raise ValueError(
                f"option {field.name}={value!r} of {name!r} needs the mechanism module (learned parameters, state "
                "or per-input geometry); the HF adapter calls the functional core, so leave it at its default"
            )
    return _Setup(spec, kwargs, frozenset(params))


def _resolve_mask(attention_mask: Any, module: nn.Module, is_causal: bool | None) -> HFMask:
    """Turn what the model passed as ``attention_mask`` into an :class:`HFMask`."""
    if isinstance(attention_mask, HFMask):
        return attention_mask
    if attention_mask is None:  # the model built no mask: no padding; causality as SDPA reads it
        return HFMask(None, bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)))
    shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
    raise ValueError(
        f"attnzoo mechanisms take a (B, N) padding mask and a causal flag; got a prepared attention mask {shape} "
        "(pass a 2D attention_mask to the model instead)"
    )


def make_attention_function(name: str, **options: Any) -> Callable[..., tuple[Tensor, None]]:
    """The HF attention-interface function running mechanism ``name`` with ``options``.

    Returns:
        ``fn(module, query, key, value, attention_mask, *, dropout=0.0, scaling=None, is_causal=None,
        **kwargs) -> (out (B, N, H, d), None)`` with ``query: (B, H, N, d)``, ``key, value: (B, H_kv, N, d)``.

    Raises:
        ValueError: (when called) a causal request for a non-causal mechanism (or the reverse), a
            padding mask for a mechanism without ``key_padding_mask``, a scaling or dropout the core
            cannot apply, attention weights requested, or an HF extra (softcap, position bias,
            sliding window, sinks) the mechanism cannot honour.
    """
    setup = _bind(name, options)

    def attnzoo_attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        extras = [k for k in _MATH_KWARGS if kwargs.get(k) is not None]
        if extras:
            raise ValueError(f"attnzoo {name!r} cannot honour the model's {', '.join(extras)}")
        if kwargs.get("output_attentions"):
            raise ValueError("attnzoo's HF adapter returns no attention weights (output_attentions=True)")
        mask = _resolve_mask(attention_mask, module, is_causal)
        caps = setup.spec.capabilities
        if mask.causal and not caps.causal:
            raise ValueError(f"attention {name!r} cannot be causal, but {type(module).__name__} is causal")
        if not mask.causal and not caps.bidirectional:
            raise ValueError(f"attention {name!r} is causal only, but {type(module).__name__} is bidirectional")
        if mask.padding is not None and not caps.key_padding_mask:
            raise ValueError(f"attention {name!r} cannot honour a padding mask, but the model passes one")
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # GQA / MQA: every query head reads its group's key/value head
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        call = dict(setup.kwargs, mask=mask.padding, causal=mask.causal)
        if scaling is not None and "scale" in setup.takes:
            call["scale"] = scaling
        elif scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-6):
            raise ValueError(f"attention {name!r} has no scale option; the model asks for scaling={scaling}")
        if dropout > 0.0:
            if "dropout_p" not in setup.takes:
                raise ValueError(f"attention {name!r} has no attention dropout; the model asks for {dropout}")
            call["dropout_p"] = dropout
        out = zero_masked_rows(setup.spec.functional(query, key, value, **call), mask.padding)
        return out.transpose(1, 2).contiguous(), None

    return attnzoo_attention


def use_attnzoo(model: nn.Module, name: str, **options: Any) -> str:
    """Switch every attention layer of HF ``model`` to attnzoo mechanism ``name``, in place.

    Args:
        model: a ``transformers.PreTrainedModel`` whose attention goes through ``AttentionInterface``.
        name: a registered attnzoo mechanism.
        **options: fields of the mechanism's options dataclass that its functional core takes.

    Returns:
        The attention-implementation name registered for this call (``model.config._attn_implementation``).

    Raises:
        ValueError: unknown mechanism or option, an option needing the module, a model that cannot switch
            implementation, or a causal model with a mechanism that cannot be causal.
    """
    fn = make_attention_function(name, **options)
    caps = get_spec(name).capabilities
    causal_layers = [m for m in model.modules() if getattr(m, "is_causal", False) is True]
    if causal_layers and not caps.causal:
        raise ValueError(f"attention {name!r} cannot be causal, but {type(causal_layers[0]).__name__} is causal")
    key = f"attnzoo-{name}-{next(_names)}"
    AttentionInterface.register(key, fn)
    AttentionMaskInterface.register(key, attnzoo_mask)
    model.set_attn_implementation(key)
    if model.config._attn_implementation != key:
        raise ValueError(
            f"{type(model).__name__} cannot switch its attention implementation (it stays "
            f"{model.config._attn_implementation!r})"
        )
    return key
