"""``reformer``: Reformer LSH attention (shared QK, hashed buckets, chunked attention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase, split_heads
from attnzoo.mechanisms.lra_official import LRA_CONFIG
from attnzoo.official.registry import OfficialEntry, register_official
from attnzoo.ops.reformer import naive_reformer_attention, reformer_attention
from attnzoo.ops.reformer.hashing import auto_num_buckets
from attnzoo.options import check_choice, check_field_types, check_int, check_int_tuple
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["ReformerAttention", "ReformerOptions", "reformer_flops"]


@dataclass(frozen=True)
class ReformerOptions:
    """Options of ``reformer`` (HF ``ReformerConfig`` names in brackets).

    ``num_hashes`` [``num_hashes``], ``bucket_size`` [``lsh_attn_chunk_length``], ``num_buckets``
    (one or two even factors; None = HF's rule for each sequence's real length), ``hash_seed``
    (rotations drawn from this seed, the same every call; None = fresh rotations from the global RNG
    every forward, as the official code), ``pad_slots`` (HF's behaviour: padding keeps slots in a pad
    bucket, shifting chunk boundaries, and the default bucket count follows the padded length; off by
    default, so padding changes nothing).
    """

    num_hashes: int = 2
    bucket_size: int = 64
    num_buckets: tuple[int, ...] | None = None
    hash_seed: int | None = 0
    pad_slots: bool = False
    executor: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.num_buckets, list):
            object.__setattr__(self, "num_buckets", tuple(self.num_buckets))
        check_field_types(self)
        check_int("num_hashes", self.num_hashes, minimum=1)
        check_int("bucket_size", self.bucket_size, minimum=1)
        if self.num_buckets is not None:
            check_int_tuple("num_buckets", self.num_buckets, minimum=2)
            if len(self.num_buckets) > 2 or any(f % 2 for f in self.num_buckets):
                raise ValueError(f"option num_buckets must be one or two even factors, got {self.num_buckets}")
        if self.hash_seed is not None:
            check_int("hash_seed", self.hash_seed, minimum=0)
        check_choice("executor", self.executor, EXECUTOR_NAMES)


def reformer_flops(n: int, d: int, options: ReformerOptions, causal: bool) -> float:
    """Forward FLOPs per (batch, head): hashing ``2 N d nb/2`` per round plus chunked attention,
    each of the ``R N`` slots against ``2 c`` keys for scores and values: ``R (N d nb + 8 N c d)``."""
    c = options.bucket_size
    rounds = options.num_hashes if n > c else 1
    nb = sum(options.num_buckets or auto_num_buckets(n, c))
    return rounds * (n * d * nb + 8.0 * n * min(c, n) * d)


@register(
    "reformer",
    options=ReformerOptions,
    capabilities=Capabilities(
        causal=False,  # HF's decoder mask leaks: later tokens move chunk boundaries
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(R*N*c*d)",
        memory="O(R*N*d)",
        pattern="lsh_chunks",
        # torch.compile(fullgraph=True) fails: the forward creates a seeded torch.Generator (its LSH rotations);
        # dynamo cannot create one inside a graph, and the bucket-sorted chunk layout is data-dependent
        compile_fullgraph=False,
    ),
    functional=reformer_attention,
    reference=naive_reformer_attention,
    flops=reformer_flops,
)
class ReformerAttention(AttentionBase):
    """Reformer LSH attention: shared QK, angular hash buckets, chunks attend themselves and one back.

    Projections: ``qkv = Linear(dim, 2 dim)`` giving the shared query/key and the value. Set
    ``module.rotations`` (``(H, d, R, nb/2)``) to inject the rotations (e.g. an official draw).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        self.qkv = nn.Linear(dim, 2 * dim)
        nn.init.trunc_normal_(self.qkv.weight, std=0.02)
        nn.init.zeros_(self.qkv.bias)
        self.rotations: Tensor | None = None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, N, dim)`` -> shared query/key (twice) and value, each ``(B, H, N, d)``."""
        qk, v = self.qkv(x).chunk(2, dim=-1)
        qk = split_heads(qk, self.num_heads)
        return qk, qk, split_heads(v, self.num_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: ReformerOptions = self.options
        return reformer_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            num_hashes=o.num_hashes,
            bucket_size=o.bucket_size,
            num_buckets=o.num_buckets,
            hash_seed=o.hash_seed,
            rotations=self.rotations,
            pad_slots=o.pad_slots,
            dropout_p=self.attention_dropout(),
            executor=o.executor,
        )


def convert_lra_reformer(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """Nystromformer-LRA reformer ``Attention`` weights to ``qkv`` and ``proj``.

    The LSH module's ``query_key.weight`` / ``value.weight`` are ``W_q.weight`` / ``W_v.weight``
    (tied) and have no bias; ``W_k.*``, the q/v biases and the constant mask buffers are dead.

    Raises:
        ValueError: a missing or unexpected tensor (named).
    """
    needed = ["W_q.weight", "W_v.weight", "ff.weight", "ff.bias"]
    missing = [k for k in needed if k not in state_dict]
    dead = {"W_q.bias", "W_k.weight", "W_k.bias", "W_v.bias", "attn.query_key.weight", "attn.value.weight"}
    dead |= {f"attn.{kind}_float{bits}" for kind in ("self_mask_value", "mask_value") for bits in (16, 32)}
    extra = sorted(set(state_dict) - set(needed) - dead)
    if missing or extra:
        raise ValueError(f"not a Nystromformer-LRA reformer state dict: missing {missing}, unexpected {extra}")
    weight = torch.cat([state_dict["W_q.weight"], state_dict["W_v.weight"]])
    return {
        "qkv.weight": weight,
        "qkv.bias": torch.zeros(weight.shape[0], dtype=weight.dtype),
        "proj.weight": state_dict["ff.weight"],
        "proj.bias": state_dict["ff.bias"],
    }


def _reformer_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if causal:
        raise ValueError("nystromformer-lra 'reformer' has no causal mode")
    return {
        "num_hashes": args["num_hash"],
        "bucket_size": 64,
        "num_buckets": auto_num_buckets(args["max_seq_len"], 64, args["max_seq_len"]),
        "hash_seed": None,
        "pad_slots": True,
    }


register_official(
    OfficialEntry(
        source="nystromformer-lra",
        name="reformer",
        mechanism="reformer",
        defaults={**LRA_CONFIG, "num_hash": 2},
        options=_reformer_options,
        convert=convert_lra_reformer,
        notes="HF LSHSelfAttention (W_q = query_key, W_v = value, ff -> proj); pad_slots on, fresh rotations "
        "every forward unless injected (module.rotations)",
    )
)
