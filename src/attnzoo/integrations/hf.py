"""Run attnzoo mechanisms inside Hugging Face ``transformers`` models.

``use_attnzoo(model, "local", window_size=64)`` registers one attention function and one mask
function under a fresh implementation name (``AttentionInterface.register`` and
``AttentionMaskInterface.register``), switches ``model`` to it with ``set_attn_implementation``,
records the per-layer choice in ``model.config.attnzoo`` (``use_attnzoo(model)`` restores it after
``from_pretrained``) and makes ``generate()`` create an :class:`~attnzoo.integrations.hf_cache.AttnzooCache`.

What the two functions do:

* The mask function replaces HF's dense mask: it accepts the patterns attnzoo can honour exactly,
  HF's plain causal and bidirectional mask functions and their sliding-window forms, with the queries
  the last tokens of the sequence (no KV-cache offset, or the cached length of an ``AttnzooCache``),
  and returns an :class:`HFMask`: the ``(B, N)`` padding mask (True = real token, the polarity of both
  libraries), the causal flag, the cached length and the window. Packed-sequence and custom
  (``or_mask``/``and_mask``) patterns and static caches raise ``ValueError`` instead of being dropped.
* The attention function gets ``q: (B, H, N, d)`` and ``k, v: (B, H_kv, N, d)`` after RoPE, repeats
  the key/value heads for GQA, checks that the mechanism can honour causality and the scaling the
  model asks for, calls the mechanism's functional core (``attnzoo.get_spec(name).functional``) with
  the options given to ``use_attnzoo``, zeroes padded query rows, and returns ``(B, N, H, d)``. With an
  ``AttnzooCache`` it also builds the layer's decode state from the prompt and, for later tokens, runs
  one ``decode`` step of that state per token instead of the core.

Only options the functional core takes are accepted; options that need the mechanism module's
learned parameters (e.g. ``local``'s ``use_rpe``) must stay at their defaults here. An option left
``None`` where the core has a concrete default takes the core's default: ``performer``'s and ``ra``'s
``seed=None`` (a fresh draw held by a module) becomes the core's fixed ``seed=0``, since there is no
module to hold a draw. Needs the optional extra ``attnzoo[hf]``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

from attnzoo.integrations.hf_cache import AttnzooCache, AttnzooLayer, claim_layer
from attnzoo.mechanisms.causal_eva import CausalEvaAttention
from attnzoo.ops.common import zero_masked_rows
from attnzoo.ops.eva.causal import causal_chunk_keys
from attnzoo.registry import MechanismSpec, build, get_spec, make_options

__all__ = ["HFMask", "attnzoo_mask", "make_attention_function", "use_attnzoo"]

_OWNED = ("mask", "causal", "scale", "dropout_p")  # functional arguments the adapter sets per call
_MATH_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")  # HF extras that change the math
_names = itertools.count()


@dataclass(frozen=True)
class HFMask:
    """What the attnzoo mask function hands to the attention function.

    Attributes:
        padding: ``(B, past + N)`` bool, True = real token, or ``None`` when every token is real.
        causal: whether token i may use only tokens j <= i.
        past: tokens before the ``N`` queries (held by an :class:`~attnzoo.integrations.hf_cache.AttnzooCache`).
        window: HF's ``sliding_window`` W of a sliding-window mask (causal: keys ``i - W < j <= i``;
            bidirectional: ``|i - j| <= W``), or ``None``.
    """

    padding: Tensor | None
    causal: bool
    past: int = 0
    window: int | None = None


def _closure(fn: Callable[..., Any], name: str) -> Any:
    """The value of free variable ``name`` of closure ``fn`` (``None`` if it has none)."""
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    return fn.__closure__[names.index(name)].cell_contents if name in names else None


def _pattern(mask_function: Callable[..., Any]) -> tuple[bool, int | None] | None:
    """``(causal, sliding window W or None)`` of HF's plain or sliding-window mask functions, else ``None``.

    Sliding windows are ``and_masks(sliding_window_overlay(W), causal_mask_function)`` and
    ``and_masks(sliding_window_bidirectional_overlay(W), bidirectional_mask_function)`` (transformers 5).
    """
    plain = {causal_mask_function: True, bidirectional_mask_function: False}
    if mask_function in plain:
        return plain[mask_function], None
    parts = _closure(mask_function, "mask_functions")
    if not isinstance(parts, tuple) or len(parts) != 2 or parts[1] not in plain:
        return None
    overlay = {True: "sliding_window_overlay.", False: "sliding_window_bidirectional_overlay."}[plain[parts[1]]]
    window = _closure(parts[0], "sliding_window")
    if not getattr(parts[0], "__qualname__", "").startswith(overlay) or not isinstance(window, int):
        return None
    return plain[parts[1]], window


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
            ``kv_offset == 0`` and ``q_offset + q_length == kv_length`` (the queries are the last tokens;
            ``q_offset > 0`` only for a causal model decoding from a cache).
        mask_function: HF's ``mask_mod``: ``causal_mask_function``, ``bidirectional_mask_function`` or
            their sliding-window forms (see :class:`HFMask`'s ``window``).
        attention_mask: HF's 2D padding mask ``(B, kv_length)`` (True/1 = real token) or ``None``.

    Raises:
        ValueError: a pattern, offset or mask attnzoo cannot express.
    """
    pattern = _pattern(mask_function)
    if pattern is None:
        name = getattr(mask_function, "__qualname__", repr(mask_function))
        raise ValueError(
            f"attnzoo's HF adapter honours plain causal or bidirectional masks, or their sliding windows (plus "
            f"padding) only; the model asks for mask function {name} (packed sequences or a custom or/and mask)"
        )
    causal, window = pattern
    if not isinstance(q_offset, int) or not isinstance(kv_offset, int) or kv_offset or q_offset + q_length != kv_length:
        raise ValueError(
            f"attnzoo's HF adapter needs the queries to be the last of kv_length tokens counted from 0 "
            f"(q_offset + q_length == kv_length, kv_offset == 0), got q_offset={q_offset}, q_length={q_length}, "
            f"kv_length={kv_length}, kv_offset={kv_offset}: static and sliding-window HF caches are not supported; "
            "generate with the default cache (an AttnzooCache) or use_cache=False"
        )
    if q_offset and not causal:
        raise ValueError(f"a bidirectional model cannot decode from a cache ({q_offset} tokens cached)")
    if attention_mask is None:
        return HFMask(None, causal, q_offset, window)
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch_size, kv_length):
        raise ValueError(
            f"attnzoo's HF adapter takes a 2D padding mask (B, N) = ({batch_size}, {kv_length}), "
            f"got {tuple(attention_mask.shape)}"
        )
    return HFMask(attention_mask.to(torch.bool), causal, q_offset, window)


@dataclass(frozen=True)
class _Setup:
    """A mechanism bound to the functional keyword options ``use_attnzoo`` received.

    ``options`` is the validated options dataclass with every ``None`` the core resolves replaced by the
    core's default (so a causal module built from it for decoding draws what the core draws).
    """

    spec: MechanismSpec
    kwargs: dict[str, Any]
    takes: frozenset[str]
    options: Any


def _bind(name: str, opts: dict[str, Any]) -> _Setup:
    """Validate ``opts`` with the mechanism's options dataclass and keep those its functional core takes."""
    spec = get_spec(name)
    if spec.functional is None:
        raise ValueError(f"attention {name!r} has no functional core to run inside HF models")
    params = inspect.signature(inspect.unwrap(spec.functional)).parameters  # the core itself, not its SDPA form
    options = make_options(spec.options, opts, context=name)
    defaults = spec.options()
    kwargs: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    for field in fields(options):
        value = getattr(options, field.name)
        if field.name in params and field.name not in _OWNED:
            if value is not None or params[field.name].default in (None, inspect.Parameter.empty):
                kwargs[field.name] = value
            else:
                resolved[field.name] = params[field.name].default
        elif value != getattr(defaults, field.name):
            raise ValueError(
                f"option {field.name}={value!r} of {name!r} needs the mechanism module (learned parameters, state "
                "or per-input geometry); the HF adapter calls the functional core, so leave it at its default"
            )
    return _Setup(spec, kwargs, frozenset(params), dataclasses.replace(options, **resolved))


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


def _default_scale(scaling: float | None, query: Tensor) -> bool:
    """Whether ``scaling`` is ``None`` or the mechanisms' default ``d**-0.5`` for ``query: (..., d)``."""
    return scaling is None or math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-6)


def _start_state(
    setup: _Setup, layer: AttnzooLayer, q: Tensor, k: Tensor, v: Tensor, mask: HFMask, scaling: float | None
) -> None:
    """Build ``layer``'s causal decoder and its state after the prompt ``q, k, v: (B, H, T, d)``."""
    name = setup.spec.name
    if not mask.causal:
        raise ValueError(f"a bidirectional model cannot decode from a cache (attention {name!r})")
    if not _default_scale(scaling, q):
        raise ValueError(
            f"attnzoo decode states use the scale d**-0.5 = {q.shape[-1] ** -0.5:g}; the model asks for "
            f"scaling={scaling} (call it with use_cache=False)"
        )
    h, d = q.shape[1], q.shape[-1]
    with torch.random.fork_rng(devices=[]):  # the module's unused weight init must not move generate()'s sampling RNG
        decoder = build(name, h * d, h, causal=True, options=setup.options).to(q.device).eval()
    if isinstance(decoder, CausalEvaAttention):  # the functional core's parameter-free chunk keys, not learned maps
        decoder.chunk_keys = causal_chunk_keys
    layer.decoder = decoder
    layer.state = decoder.init_state(q, k, v, mask.padding)
    layer.length = q.shape[2]


def _decode(
    setup: _Setup,
    layer: AttnzooLayer,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: HFMask,
    scaling: float | None,
    dropout: float,
) -> Tensor:
    """Advance ``layer``'s state by new tokens ``q, k, v: (B, H, n, d)``, one decode step each -> ``(B, H, n, d)``."""
    if mask.past != layer.length:
        raise ValueError(f"the model says {mask.past} tokens are cached, the attnzoo state holds {layer.length}")
    if dropout > 0.0:
        raise ValueError(f"decoding from a cache applies no attention dropout (asked {dropout}): call model.eval()")
    if not _default_scale(scaling, q):
        raise ValueError(f"attnzoo decode states use the scale d**-0.5; the model asks for scaling={scaling}")
    if mask.padding is not None and not bool(mask.padding[:, mask.past :].all()):
        raise ValueError("tokens decoded after the prompt must be real: the attention_mask has padding after it")
    decoder, outs = layer.decoder, []
    for t in range(q.shape[2]):
        out, layer.state = decoder.decode(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], layer.state)
        outs.append(out)
    layer.length += q.shape[2]
    return torch.cat(outs, dim=2)


def make_attention_function(name: str, **options: Any) -> Callable[..., tuple[Tensor, None]]:
    """The HF attention-interface function running mechanism ``name`` with ``options``.

    Returns:
        ``fn(module, query, key, value, attention_mask, *, dropout=0.0, scaling=None, is_causal=None,
        **kwargs) -> (out (B, N, H, d), None)`` with ``query: (B, H, N, d)``, ``key, value: (B, H_kv, N, d)``.

    Attention dropout (``dropout > 0``, training) goes to the core's ``dropout_p`` where the mechanism has
    attention probabilities (softmax, local, dilated, butterfly, diffuser, linformer, reformer, causal
    EVA); the kernel and low-rank mechanisms (performer, nystrom, linear, EVA, LARA, RA, ScatterBrain,
    PSF, ...) apply none, as their official codes and attnzoo's own modules, and say so in a warning.

    Raises:
        ValueError: (when called) a causal request for a non-causal mechanism (or the reverse), a
            padding mask for a mechanism without ``key_padding_mask``, a scaling the core cannot apply,
            attention weights requested, an HF extra (softcap, position bias, sinks) the mechanism cannot
            honour, or a sliding-window layer for a mechanism other than ``local`` (or a
            ``window_size`` option that is not the model's window).
    """
    setups: dict[Any, _Setup] = {None: _bind(name, options)}  # by (HF window W, causal, model has a window)
    from_model = name == "local" and "window_size" not in options

    def for_layer(module: nn.Module, mask: HFMask, sliding_window: Any) -> _Setup:
        """The setup of a layer with ``mask``: ``local``'s window_size from HF's W (``W - 1`` causal, ``W``
        bidirectional); without a window option, in a model whose config has a ``sliding_window``, a layer
        without one (Gemma-style alternation, Qwen2's full layers) runs full attention (``softmax``)."""
        if sliding_window is not None and sliding_window != mask.window:
            raise ValueError(f"the layer passes sliding_window={sliding_window} but its mask has window {mask.window}")
        windowed_model = getattr(getattr(module, "config", None), "sliding_window", None) is not None
        key = (mask.window, mask.causal, windowed_model)
        if key not in setups:
            if mask.window is None:
                setups[key] = _bind("softmax", {}) if from_model and windowed_model else setups[None]
            elif name != "local":
                raise ValueError(
                    f"attention {name!r} cannot honour the model's sliding window {mask.window}; 'local' maps it "
                    "exactly (use_attnzoo(model, 'local') takes each layer's window from the model)"
                )
            else:
                size = mask.window - 1 if mask.causal else mask.window
                if not from_model and options["window_size"] != size:
                    raise ValueError(
                        f"option window_size={options['window_size']} differs from the model's sliding window "
                        f"{mask.window} (window_size={size} in attnzoo's terms); leave window_size out to take it "
                        "from the model"
                    )
                setups[key] = _bind(name, {**options, "window_size": size})
        return setups[key]

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
        setup = for_layer(module, mask, kwargs.get("sliding_window"))
        caps = setup.spec.capabilities
        if mask.causal and not caps.causal:
            raise ValueError(f"attention {name!r} cannot be causal, but {type(module).__name__} is causal")
        if not mask.causal and not caps.bidirectional:
            raise ValueError(f"attention {name!r} is causal only, but {type(module).__name__} is bidirectional")
        if mask.padding is not None and not caps.key_padding_mask:
            raise ValueError(f"attention {name!r} cannot honour a padding mask, but the model passes one")
        layer = claim_layer(key)
        if mask.past and layer is None:
            raise ValueError(
                f"the model decodes after {mask.past} cached tokens from a cache attnzoo does not hold; generate() "
                "with the default cache (an AttnzooCache), pass cache=AttnzooCache(), or use_cache=False"
            )
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # GQA / MQA: every query head reads its group's key/value head
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        if layer is not None and layer.state is not None:
            out = _decode(setup, layer, query, key, value, mask, scaling, dropout)
        else:
            call = dict(setup.kwargs, mask=mask.padding, causal=mask.causal)
            if scaling is not None and "scale" in setup.takes:
                call["scale"] = scaling
            elif scaling is not None and not _default_scale(scaling, query):
                raise ValueError(f"attention {name!r} has no scale option; the model asks for scaling={scaling}")
            if dropout > 0.0 and "dropout_p" in setup.takes:
                call["dropout_p"] = dropout
            elif dropout > 0.0:
                warnings.warn(
                    f"attention {setup.spec.name!r} has no attention probabilities to drop; as in its official code, "
                    f"the model's attention dropout {dropout} is not applied",
                    stacklevel=2,
                )
            out = zero_masked_rows(setup.spec.functional(query, key, value, **call), mask.padding)
            if layer is not None:
                _start_state(setup, layer, query, key, value, mask, scaling)
        return out.transpose(1, 2).contiguous(), None

    return attnzoo_attention


LayerChoice = str | dict[str, Any]  # a mechanism name, or {"name": ..., **options}


def _layer_specs(model: nn.Module, mechanism: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{"name": ..., **options}`` per layer of ``model`` from what :func:`use_attnzoo` was given."""
    if mechanism is None:
        saved = getattr(model.config, "attnzoo", None)
        if options or not isinstance(saved, dict) or not isinstance(saved.get("layers"), list):
            raise ValueError(
                "use_attnzoo(model) without a mechanism restores the choice saved in model.config.attnzoo; "
                + ("options need a mechanism" if options else "this model's config holds none")
            )
        return [dict(spec) for spec in saved["layers"]]
    if isinstance(mechanism, str):
        return [dict(options, name=mechanism)] * _num_layers(model)
    if options:
        raise ValueError("with a per-layer choice give each layer's options as {'name': ..., **options}")
    n = _num_layers(model)
    if callable(mechanism):
        choices: list[Any] = [mechanism(i) for i in range(n)]
    elif isinstance(mechanism, dict):
        choices = [None] * n
        for span, choice in mechanism.items():
            for i in _layer_range(str(span), n):
                if choices[i] is not None:
                    raise ValueError(f"layer {i} is chosen twice (key {span!r})")
                choices[i] = choice
        missing = [i for i, choice in enumerate(choices) if choice is None]
        if missing:
            raise ValueError(f"layers {missing} of {n} have no mechanism; cover every layer (e.g. with 'softmax')")
    else:
        raise TypeError(f"mechanism must be a name, a {{'a-b': name}} dict or a callable, got {mechanism!r}")
    specs = []
    for i, choice in enumerate(choices):
        if isinstance(choice, str):
            specs.append({"name": choice})
        elif isinstance(choice, dict) and isinstance(choice.get("name"), str):
            specs.append(dict(choice))
        else:
            raise ValueError(f"layer {i}: expected a mechanism name or {{'name': ..., **options}}, got {choice!r}")
    return specs


def _num_layers(model: nn.Module) -> int:
    """The number of decoder/encoder layers in ``model``'s (text) config."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def _layer_range(span: str, n: int) -> range:
    """Layers ``"a-b"`` (inclusive) or ``"a"`` of ``n``."""
    first, _, last = span.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"layer key {span!r} is not 'a' or 'a-b' (inclusive layer indices)") from None
    if not 0 <= lo <= hi < n:
        raise ValueError(f"layer key {span!r} is outside layers 0-{n - 1}")
    return range(lo, hi + 1)


def use_attnzoo(model: nn.Module, mechanism: Any = None, **options: Any) -> str:
    """Switch the attention layers of HF ``model`` to attnzoo mechanisms, in place.

    Args:
        model: a ``transformers.PreTrainedModel`` whose attention goes through ``AttentionInterface``.
        mechanism: a registered attnzoo mechanism for every layer; or per layer: a dict of inclusive
            layer ranges (``{"0-5": "local", "6-11": {"name": "softmax"}}``, every layer covered once) or
            a callable ``layer_idx -> name | {"name": ..., **options}``; or ``None`` to restore the
            choice a saved model recorded in ``model.config.attnzoo`` (after ``from_pretrained``).
        **options: with a single name, fields of the mechanism's options dataclass that its functional
            core takes.

    Returns:
        The attention-implementation name registered for this call (``model.config._attn_implementation``).
        The per-layer choice is recorded as ``model.config.attnzoo = {"layers": [{"name": ..., **options}]}``,
        which ``save_pretrained`` writes to ``config.json``.

    Raises:
        ValueError: unknown mechanism or option, an option needing the module, a layer chosen twice or
            not at all, a model that cannot switch implementation, a causal layer with a mechanism that
            cannot be causal, or nothing to restore.
    """
    specs = _layer_specs(model, mechanism, options)
    fns = [make_attention_function(spec["name"], **{k: v for k, v in spec.items() if k != "name"}) for spec in specs]
    for module in model.modules():
        index = getattr(module, "layer_idx", None)
        if getattr(module, "is_causal", False) is True and isinstance(index, int) and index < len(specs):
            name = specs[index]["name"]
            if not get_spec(name).capabilities.causal:
                raise ValueError(f"attention {name!r} cannot be causal, but {type(module).__name__} is causal")

    def per_layer(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        index = getattr(module, "layer_idx", None)
        if not isinstance(index, int) or not 0 <= index < len(fns):
            raise ValueError(
                f"{type(module).__name__} has layer_idx={index!r}; the choice covers layers 0-{len(fns) - 1}"
            )
        return fns[index](module, *args, **kwargs)

    single = all(spec == specs[0] for spec in specs)
    key = f"attnzoo-{specs[0]['name'] if single else 'layers'}-{next(_names)}"
    AttentionInterface.register(key, fns[0] if single else per_layer)
    AttentionMaskInterface.register(key, attnzoo_mask)
    model.set_attn_implementation(key)
    if model.config._attn_implementation != key:
        raise ValueError(
            f"{type(model).__name__} cannot switch its attention implementation (it stays "
            f"{model.config._attn_implementation!r})"
        )
    model.config.attnzoo = {"layers": specs}
    if hasattr(model, "_prepare_cache_for_generation"):
        model._prepare_cache_for_generation = _attnzoo_cache_by_default(model._prepare_cache_for_generation)
    return key


def _attnzoo_cache_by_default(prepare: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``GenerationMixin._prepare_cache_for_generation`` (bound) so ``generate()`` creates an
    :class:`AttnzooCache` where HF would create its default ``DynamicCache``; user caches, ``use_cache=False``
    and other ``cache_implementation`` values go to HF unchanged."""
    prepare = getattr(prepare, "__wrapped__", prepare)  # switching twice wraps HF's method once

    def prepare_attnzoo(generation_config: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        default = model_kwargs.get("cache") is None and generation_config.cache_implementation in (None, "dynamic")
        if default and generation_config.use_cache is not False:
            model_kwargs["cache"] = AttnzooCache()
            return
        prepare(generation_config, model_kwargs, *args, **kwargs)

    prepare_attnzoo.__wrapped__ = prepare  # type: ignore[attr-defined]
    return prepare_attnzoo
