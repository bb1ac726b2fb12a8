"""``diffuser_fractional``: fractional graph-Laplacian attention on the Diffuser graph (fractional-attn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.diffuser import DiffuserGraphOptions, convert_diffuser
from attnzoo.official.registry import OfficialEntry, register_official
from attnzoo.ops.diffuser import (
    VARIANTS,
    diffuser_fractional_attention,
    naive_diffuser_fractional_attention,
    tied_sphere_attention,
)
from attnzoo.ops.diffuser.fractional import OFFICIAL_TERMS, TIED_VARIANTS
from attnzoo.options import check_choice, check_float, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["FractionalAttention", "FractionalOptions", "fractional_flops"]


@dataclass(frozen=True)
class FractionalOptions(DiffuserGraphOptions):
    """Options of ``diffuser_fractional``: the graph (:class:`DiffuserGraphOptions`) and

    ``variant`` (the official class by short name: renormfrac, regfrac, detached_regfrac, lnl,
    unfrac, limitfrac, symlimitfrac on the graph; l2 and fracdm, which use no graph and tie keys to
    the queries, so the key projection is unused), ``gamma`` in (0, 1), ``terms`` of the series (None = the
    official count, 6 or 7), ``alpha`` (teleport), ``epsilon`` (LNL mix). Compatibility with the
    official code (all off = intended math): ``batch_rho`` (rho and the limit vector over the whole
    batch, F5; for l2 / fracdm: attention over the whole flattened batch, pads included, on the
    official raw ``(B, N, H, d) -> (H, B*N, d)`` reshape of the queries, F2), ``detach`` (no gradient
    through the weights / L^g, F4), ``negate_scores`` (``exp(-<k, q>)``, renormfrac at the pinned
    commit), ``scramble_heads`` (the official raw ``(H, B*N, d) -> (B, N, H, d)`` reshape of the output, F1),
    ``official_pads`` (padded tokens stay in the operator as the official classes keep them: their content is
    projected, and their per-head rows are the official rows of isolated nodes, F6 (``-V`` for regfrac,
    ``alpha V`` for renormfrac, ``V - L^g V`` for unfrac, the limit mix for limitfrac), which ``scramble_heads``
    moves into real rows; so a padded token's content reaches real rows, as it does officially).
    """

    variant: str = "renormfrac"
    gamma: float = 0.5
    terms: int | None = None
    alpha: float = 0.1
    epsilon: float = 0.8
    batch_rho: bool = False
    detach: bool = False
    negate_scores: bool = False
    scramble_heads: bool = False
    official_pads: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("variant", self.variant, VARIANTS)
        check_float("gamma", self.gamma, minimum=0.0, maximum=1.0)
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"option gamma must be in (0, 1), got {self.gamma}")
        if self.terms is not None:
            check_int("terms", self.terms, minimum=0)
        check_float("alpha", self.alpha, minimum=0.0, maximum=1.0)
        check_float("epsilon", self.epsilon, minimum=0.0, maximum=1.0)

    def core_kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`diffuser_fractional_attention` (all but ``scramble_heads``; ``official_pads``
        as ``zero_pad_rows``)."""
        return {
            **self.graph_kwargs(),
            "variant": self.variant,
            "gamma": self.gamma,
            "terms": self.terms,
            "alpha": self.alpha,
            "epsilon": self.epsilon,
            "batch_rho": self.batch_rho,
            "detach": self.detach,
            "negate_scores": self.negate_scores,
            "zero_pad_rows": not self.official_pads,
        }


def fractional_flops(n: int, d: int, options: FractionalOptions, causal: bool) -> float:
    """Forward FLOPs per (batch, head): T sparse-times-dense powers ``2 T (E + N) N``, the edge scores
    ``2 E d`` and the final dense product with V ``2 N^2 d`` (T = the series terms); ``l2`` / ``fracdm``:
    the dense logits and product ``4 N^2 d``."""
    if options.variant in TIED_VARIANTS:
        return 4.0 * n * n * d
    terms = OFFICIAL_TERMS[options.variant] if options.terms is None else options.terms
    edges = options.num_edges(n)
    return 2.0 * terms * (edges + n) * n + 2.0 * edges * d + 2.0 * n * n * d


@register(
    "diffuser_fractional",
    options=FractionalOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(T*E*N)",
        memory="O(T*N^2)",
        pattern="diffuser_graph",
        convex=False,
        # torch.compile(fullgraph=True) fails: the forward creates a seeded torch.Generator (its random graph);
        # dynamo cannot create one inside a graph, and the graph's edge lists are data-dependent
        compile_fullgraph=False,
    ),
    functional=diffuser_fractional_attention,
    reference=naive_diffuser_fractional_attention,
    flops=fractional_flops,
)
class FractionalAttention(AttentionBase):
    """Fractional Diffuser: a truncated series for L^gamma of the attention-graph Laplacian, official variants.

    ``dropout`` drops the per-head output in training (the official classes drop their output).
    """

    def padding_takes_part(self) -> bool:
        """With ``official_pads`` padded tokens are projected as they are (the official classes read their content)."""
        return self.options.official_pads

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """The variant on ``(B, H, N, d)``; ``scramble_heads`` returns the official raw reshape of the
        ``(H, B*N, d)`` result (token t holds flat rows ``t*H .. t*H + H - 1``, mixing the batch), laid out so
        that the ordinary head merge gives the official output."""
        o: FractionalOptions = self.options
        if o.variant in TIED_VARIANTS and o.batch_rho:
            out = _whole_batch_tied(q, v, o)
        else:
            out = diffuser_fractional_attention(q, k, v, mask=mask, **o.core_kwargs())
        p = self.attention_dropout()
        out = F.dropout(out, p) if p > 0 else out
        if o.scramble_heads:
            b, h, n, d = out.shape
            out = out.permute(1, 0, 2, 3).reshape(h, b * n, d).reshape(b, n, h, d).transpose(1, 2)
        return out


def _whole_batch_tied(q: Tensor, v: Tensor, o: FractionalOptions) -> Tensor:
    """The official l2 / fracdm batch behaviour: one sequence of all B*N tokens per head (pads
    included), queries raw-reshaped ``(B, N, H, d) -> (H, B*N, d)`` (F2); returned so that
    ``scramble_heads`` (F1) lays it out as the official output."""
    b, h, n, d = q.shape
    flat_q = q.transpose(1, 2).reshape(h, b * n, d)[None]
    flat_v = v.permute(1, 0, 2, 3).reshape(h, b * n, v.shape[-1])[None]
    out = tied_sphere_attention(flat_q, flat_v, variant=o.variant, gamma=o.gamma)
    return out[0].reshape(h, b, n, -1).permute(1, 0, 2, 3)


def _convert_tied(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``L2Attention`` (``query``, ``value``) or ``FracDMSelfAttention`` (also an unused ``key``)
    weights to ``qkv``: the key rows take the query's (l2 has none; neither reads them)."""
    sd = {k.removeprefix("self."): v for k, v in state_dict.items()}
    if not any(name.startswith("key.") for name in sd):  # l2: no key at all
        sd |= {f"key.{t}": sd[f"query.{t}"] for t in ("weight", "bias") if f"query.{t}" in sd}
    return convert_diffuser(sd, args)


def _fractional_options(variant: str) -> Any:
    def options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
        window = args["attention_window"]
        return {
            "attention_window": window[0] if isinstance(window, (list, tuple)) else window,
            "num_rand": args["num_rand"],
            "num_glob": args["num_glob"],
            "graph": "official",
            "variant": variant,
            "gamma": args["gamma"],
            "batch_rho": True,
            "detach": True,
            "negate_scores": variant == "renormfrac",
            "scramble_heads": True,
            "official_pads": True,
        }

    return options


def _official_notes(variant: str) -> str:
    if variant in TIED_VARIANTS:
        return (
            f"{variant}: no graph, tied q/k on the unit sphere over the whole flattened batch, pads included (F5),"
            " scrambled queries (F2) and heads (F1)"
        )
    return (
        f"{variant}: official graph, batch rho (F5), detached (F4), scrambled heads (F1) that move pad nodes'"
        " rows into real rows (F6: official_pads keeps them and the pads' content)"
        + (", exp(-<k, q>)" if variant == "renormfrac" else "")
    )


for _variant in VARIANTS:
    register_official(
        OfficialEntry(
            source="fractional-attn",
            name=_variant,
            mechanism="diffuser_fractional",
            defaults={"gamma": 0.5, "attention_window": 64, "num_rand": 64, "num_glob": 64},
            options=_fractional_options(_variant),
            convert=_convert_tied if _variant in TIED_VARIANTS else convert_diffuser,
            notes=_official_notes(_variant),
        )
    )
