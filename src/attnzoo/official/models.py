"""``from_official_model``: whole official models (embeddings, blocks, head) rebuilt from attnzoo's ``models/``.

Each official code base whose whole model attnzoo reproduces registers one builder with
:func:`register_official_model`: ``builder(config, state_dict) -> nn.Module``, where ``config`` is the
official configuration exactly as the official code builds it and ``state_dict`` the official model's
weights (official names) or ``None``. The builder maps the config onto attnzoo's model code, converts
the weight names and loads them strictly.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["from_official_model", "official_model_doc", "official_model_sources", "register_official_model"]

ModelBuilder = Callable[[Mapping[str, Any], Mapping[str, Tensor] | None], nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_official_model(source: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register ``builder`` as the whole-model mapping of official ``source``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if source in _MODELS:
            raise ValueError(f"official model source {source!r} is registered twice")
        _MODELS[source] = builder
        return builder

    return decorate


def official_model_sources() -> list[str]:
    """Every source :func:`from_official_model` accepts, sorted."""
    _load_builders()
    return sorted(_MODELS)


def official_model_doc(source: str) -> str:
    """The mapping documentation of ``source``: the docstring of the module that registers its builder.

    Raises:
        ValueError: an unknown source.
    """
    _load_builders()
    if source not in _MODELS:
        raise ValueError(f"unknown official model source {source!r}; known: {', '.join(sorted(_MODELS)) or '(none)'}")
    return inspect.getdoc(sys.modules[_MODELS[source].__module__]) or ""


def from_official_model(
    source: str, *, config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None
) -> nn.Module:
    """Build the attnzoo model that computes what official model ``source`` computes, in eval mode.

    Args:
        source: the official code base (see :func:`official_model_sources`).
        config: the official configuration, as the official code builds it; keys the official model
            does not read are ignored, keys it needs and that are missing are an error (named).
        state_dict: the official model's ``state_dict()`` (official names); loaded strictly when given.

    Returns:
        The attnzoo model in eval mode; its call signature is the builder's (documented per source).

    Raises:
        ValueError: unknown source, a missing config key, or weights that do not fit (named).
    """
    _load_builders()
    if source not in _MODELS:
        raise ValueError(f"unknown official model source {source!r}; known: {', '.join(sorted(_MODELS)) or '(none)'}")
    return _MODELS[source](config, state_dict).eval()


def _load_builders() -> None:
    """Import the modules that register builders (kept lazy: they import ``attnzoo.models``)."""
    import attnzoo.official.model_builders  # noqa: F401
