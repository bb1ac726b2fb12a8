"""Loading checkpoints trained with the official code of a mechanism (one function for all).

Each module class that can read official weights has a static ``convert_official(state_dict)``
returning its own names; ``load_official`` applies it and loads strictly, so a missing or extra
tensor is reported by name.

* ``local``: efficient-attention ``LocalAttention`` (``qkv``, ``proj``, ``local_relative_position_bias_table``).
* ``dilated``: torchscale ``DilatedAttention`` (``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``inner_attn_ln``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["load_converted", "load_official"]


def load_official(module: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load an official implementation's ``state_dict`` into an attnzoo attention module.

    Args:
        module: a module built by :func:`attnzoo.build`.
        state_dict: the official module's ``state_dict()`` (keys relative to that module).
        strict: fail on missing or unexpected tensors.

    Returns:
        ``module``, with the weights loaded.

    Raises:
        TypeError: the module has no official counterpart.
        ValueError: the state dict does not fit (names and shapes are listed).
    """
    convert = getattr(type(module), "convert_official", None)
    if convert is None:
        raise TypeError(f"{type(module).__name__} has no official checkpoint format to load")
    return load_converted(module, convert(dict(state_dict)), strict=strict)


def load_converted(module: nn.Module, converted: Mapping[str, Tensor], *, strict: bool = True) -> nn.Module:
    """Load a state dict already renamed to ``module``'s names; shape, missing and extra tensors are named.

    Raises:
        ValueError: a shape mismatch, or (``strict``) missing or unexpected tensors.
    """
    own = module.state_dict()
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"shape mismatch loading official weights into {type(module).__name__}: {'; '.join(wrong)}")
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(
            f"official weights do not fit {type(module).__name__}: missing {missing}, unexpected {unexpected} "
            "(after renaming to attnzoo's names)"
        )
    module.load_state_dict(dict(converted), strict=False)
    return module
