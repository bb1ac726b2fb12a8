"""``diffuser``: Diffuser's edge softmax on a sparse graph followed by multi-hop diffusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.official.registry import OfficialEntry, register_official
from attnzoo.ops.diffuser import diffuser_attention, naive_diffuser_attention, resolve_graph
from attnzoo.ops.diffuser.diffusion import GRAPHS
from attnzoo.options import check_choice, check_field_types, check_float, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["DiffuserAttention", "DiffuserGraphOptions", "DiffuserOptions", "convert_diffuser", "diffuser_flops"]


@dataclass(frozen=True)
class DiffuserGraphOptions:
    """The graph options shared by ``diffuser`` and ``diffuser_fractional`` (official config names;
    defaults from ``models/config.json``).

    ``attention_window`` w (even; overlapping local blocks of w tokens every w/2), ``num_rand``
    random in-edges per query (at N = 4096; fewer at shorter N, as the official crop), ``num_glob``
    global tokens (drawn at positions >= w), ``seed``; ``graph="official"`` replays the official
    graph exactly (N <= 4096); ``global_tokens`` fixes the global positions instead.
    """

    attention_window: int = 64
    num_rand: int = 64
    num_glob: int = 64
    seed: int = 0
    graph: str = "attnzoo"
    global_tokens: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.global_tokens, list):
            object.__setattr__(self, "global_tokens", tuple(self.global_tokens))
        check_field_types(self)
        check_int("attention_window", self.attention_window, minimum=2)
        if self.attention_window % 2:
            raise ValueError(f"option attention_window must be even, got {self.attention_window}")
        for name in ("num_rand", "num_glob", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_choice("graph", self.graph, GRAPHS)
        if self.global_tokens is not None and any(t < 0 for t in self.global_tokens):
            raise ValueError(f"option global_tokens must be positions >= 0, got {self.global_tokens}")

    def graph_kwargs(self) -> dict[str, Any]:
        """The graph keywords of :func:`diffuser_attention`."""
        return {
            "attention_window": self.attention_window,
            "num_rand": self.num_rand,
            "num_glob": self.num_glob,
            "seed": self.seed,
            "graph": self.graph,
            "global_tokens": self.global_tokens,
        }

    def num_edges(self, n: int) -> int:
        """Edges of the graph of ``n`` tokens."""
        kw = self.graph_kwargs()
        return resolve_graph(n, kw.pop("graph"), kw.pop("attention_window"), **kw).num_edges


@dataclass(frozen=True)
class DiffuserOptions(DiffuserGraphOptions):
    """Options of ``diffuser``: the graph (:class:`DiffuserGraphOptions`), ``hops`` K and ``alpha``
    (official: 5 and 0.1, hard-coded)."""

    hops: int = 5
    alpha: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("hops", self.hops, minimum=0)
        check_float("alpha", self.alpha, minimum=0.0, maximum=1.0)


def diffuser_flops(n: int, d: int, options: DiffuserOptions, causal: bool) -> float:
    """Forward FLOPs per (batch, head): ``2 E d`` for the edge scores and ``2 E d`` per hop,
    ``2 E d (K + 1)``, E the edge count of the graph of N tokens."""
    return 2.0 * options.num_edges(n) * d * (options.hops + 1)


@register(
    "diffuser",
    options=DiffuserOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(K*E*d)",
        memory="O(E + K*N*d)",
        pattern="diffuser_graph",
        # torch.compile(fullgraph=True) fails: the forward creates a seeded torch.Generator (its random graph);
        # dynamo cannot create one inside a graph, and the graph's edge lists are data-dependent
        compile_fullgraph=False,
    ),
    functional=diffuser_attention,
    reference=naive_diffuser_attention,
    flops=diffuser_flops,
)
class DiffuserAttention(AttentionBase):
    """Diffuser: edge softmax over a sparse local/random/global graph, then K-hop PageRank diffusion."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: DiffuserOptions = self.options
        return diffuser_attention(
            q, k, v, mask=mask, hops=o.hops, alpha=o.alpha, dropout_p=self.attention_dropout(), **o.graph_kwargs()
        )


def convert_diffuser(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``DiffuserSelfAttention`` weights (``query``, ``key``, ``value``; optional ``self.`` prefix) to
    ``qkv``; the self-attention has no output projection, so ``proj`` is the identity.

    Raises:
        ValueError: a missing or unexpected tensor (named).
    """
    sd = {k.removeprefix("self."): v for k, v in state_dict.items()}
    names = [f"{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")]
    missing = [name for name in names if name not in sd]
    extra = sorted(set(sd) - set(names))
    if missing or extra:
        raise ValueError(f"not a DiffuserSelfAttention state dict: missing {missing}, unexpected {extra}")
    dim = sd["query.weight"].shape[0]
    return {
        "qkv.weight": torch.cat([sd["query.weight"], sd["key.weight"], sd["value.weight"]]),
        "qkv.bias": torch.cat([sd["query.bias"], sd["key.bias"], sd["value.bias"]]),
        "proj.weight": torch.eye(dim, dtype=sd["query.weight"].dtype),
        "proj.bias": torch.zeros(dim, dtype=sd["query.bias"].dtype),
    }


def _diffuser_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    window = args["attention_window"]
    window = window[0] if isinstance(window, (list, tuple)) else window
    return {"attention_window": window, "num_rand": args["num_rand"], "num_glob": args["num_glob"], "graph": "official"}


register_official(
    OfficialEntry(
        source="diffuser",
        name="diffuser",
        mechanism="diffuser",
        defaults={"attention_window": 64, "num_rand": 64, "num_glob": 64, "attention_probs_dropout_prob": 0.1},
        options=_diffuser_options,
        convert=convert_diffuser,
        notes="DiffuserSelfAttention (query/key/value -> qkv, proj = identity) on the replayed official graph",
    )
)
