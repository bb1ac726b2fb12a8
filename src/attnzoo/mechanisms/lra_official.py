"""``from_official`` for mlpen/Nystromformer's LRA ``Attention`` (source ``nystromformer-lra``): shared pieces.

The LRA wrapper projects with ``W_q W_k W_v`` (Linear(D, H*d) each), runs the kernel in fp32 and
projects back with ``ff``; its config keys are accepted under their official names. The
``softmax`` and ``none`` entries live here (their kernels need nothing beyond the wrapper); the other
kernels register next to their mechanisms with :func:`lra_entry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from attnzoo.mechanisms.butterfly import convert_lra_attention
from attnzoo.official import OfficialEntry, register_official

__all__ = ["LRA_CONFIG", "lra_entry"]

# The LRA model section shared by every task (lra_config.py), under its official names.
LRA_CONFIG: dict[str, Any] = {
    "transformer_dim": 64,
    "num_head": 2,
    "head_dim": 32,
    "max_seq_len": 1024,
    "attention_dropout": 0.1,
    "attention_grad_checkpointing": False,
}


def lra_entry(
    name: str,
    mechanism: str,
    extra: dict[str, Any],
    options: Callable[[dict[str, Any], bool], dict[str, Any]],
    renames: dict[str, str] | None = None,
    transform: Callable[[str, Tensor, dict[str, Any]], Tensor] | None = None,
    notes: str = "",
    source: str = "nystromformer-lra",
) -> OfficialEntry:
    """Register the ``nystromformer-lra`` (or its fork's, ``source``) entry ``name``.

    Args:
        extra: the kernel's own config keys with their official values (added to :data:`LRA_CONFIG`).
        options: ``(args, causal) -> attnzoo.build`` options.
        renames: official kernel tensor name (``attn.*``) -> attnzoo name.
        transform: ``(official name, tensor, args) -> tensor`` for renamed tensors (e.g. a shape change).
    """
    renames = renames or {}

    def convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
        kernel = {k: v for k, v in state_dict.items() if k in renames}
        out = convert_lra_attention({k: v for k, v in state_dict.items() if k not in renames}, args)
        for key, value in kernel.items():
            out[renames[key]] = value if transform is None else transform(key, value, args)
        return out

    def checked_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
        if causal:
            raise ValueError(f"{source} {name!r} has no causal mode")
        return options(args, causal)

    return register_official(
        OfficialEntry(
            source=source,
            name=name,
            mechanism=mechanism,
            defaults={**LRA_CONFIG, **extra},
            options=checked_options,
            convert=convert,
            notes=f"W_q/W_k/W_v -> qkv, ff -> proj; {notes}".rstrip("; "),
        )
    )


lra_entry("softmax", "softmax", {}, lambda args, causal: {}, notes="masked keys -1e6 (same on real rows)")
lra_entry("none", "none", {}, lambda args, causal: {}, notes="output = value projection; W_q, W_k loaded but unused")
