"""``performer``: FAVOR+ / RFA attention with positive orthogonal random features, redraw policy, causal mode."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.mechanisms.lra_official import lra_entry
from attnzoo.mechanisms.recurrent import FeatureState, feature_state, feature_step
from attnzoo.mechanisms.sampling import EA_COMMON, check_no_dropout
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.linear.kernel import CAUSAL_CHUNK, FeatureFn
from attnzoo.ops.performer import draw_projection, naive_performer_attention, performer_attention
from attnzoo.ops.performer.favor import COMPAT, KERNELS, favor_feature_maps
from attnzoo.options import check_choice, check_field_types, check_float, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["PerformerAttention", "PerformerOptions"]


@dataclass(frozen=True)
class PerformerOptions:
    """Options of ``performer``.

    ``num_features`` m random features per head (efficient-attention: ``approx_attn_dim``; performer-pytorch:
    ``nb_features``). ``kernel``: ``softmax`` (positive FAVOR+ features) or ``relu``. ``orthogonal``:
    orthogonal blocks with chi norms (else i.i.d. Gaussian): Haar blocks (``sign(diag R)``-corrected QR), or
    under ``compat`` the official codes' raw QR (biased rows, see
    :func:`attnzoo.ops.performer.draw_projection`). ``redraw``: ``fixed`` -- one draw at construction, kept
    in the ``projection`` buffer (saved with the state dict); ``step`` -- a fresh draw for every training
    forward (eval uses the buffer). ``redraw()`` replaces the buffer explicitly.
    ``seed``: draws come from a generator seeded with it (None: torch's global RNG, at construction and
    at each redraw). ``feature_eps``: constant added to every feature (official codes: 1e-4; 0 = the
    unbiased estimator, and the only value allowed with causal). ``compat``: reproduce an official
    code's quirks (see :func:`attnzoo.ops.performer.performer_attention`).
    """

    num_features: int = 256
    kernel: str = "softmax"
    orthogonal: bool = True
    redraw: str = "fixed"
    seed: int | None = None
    feature_eps: float = 0.0
    compat: str = "none"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("num_features", self.num_features, minimum=1)
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("redraw", self.redraw, ("fixed", "step"))
        check_float("feature_eps", self.feature_eps, minimum=0.0)
        check_choice("compat", self.compat, COMPAT)


def performer_flops(n: int, d: int, options: PerformerOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``8 N m d`` (+ ``2 N C (m + d)`` causal).

    Features of q and k (``W x``: 2 N m d each), ``sum phi(k) v^T`` (2 N m d) and ``phi(q)`` times it
    (2 N m d); causal adds the exact (C x C) term inside each chunk of C tokens (scores and values).
    """
    m = options.num_features
    intra = 2.0 * n * min(CAUSAL_CHUNK, n) * (m + d) if causal else 0.0
    return 8.0 * n * m * d + intra


@register(
    "performer",
    options=PerformerOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=True,
        exact=False,
        deterministic=True,
        time="O(N*m*d)",
        memory="O(N*m)",
    ),
    functional=performer_attention,
    reference=naive_performer_attention,
    flops=performer_flops,
)
class PerformerAttention(AttentionBase):
    """Performer (FAVOR+): softmax attention estimated with m positive orthogonal random features.

    No attention probabilities exist, so ``dropout`` is not applied. Buffer ``projection`` ``(H, m, d)``.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        if causal and (options.feature_eps or options.compat != "none"):
            raise ValueError("causal performer needs feature_eps=0 and compat='none' (both make rows see later keys)")
        self.generator = None if options.seed is None else torch.Generator().manual_seed(options.seed)
        self.register_buffer("projection", self._draw(), persistent=True)

    def _draw(self) -> Tensor:
        o: PerformerOptions = self.options
        return draw_projection(
            self.num_heads,
            o.num_features,
            self.head_dim,
            orthogonal=o.orthogonal,
            raw_qr=o.compat != "none",
            generator=self.generator,
        )

    @torch.no_grad()
    def redraw(self, projection: Tensor | None = None) -> None:
        """Replace the ``projection`` buffer: a new draw, or ``projection`` ``(H, m, d)`` (e.g. an official draw)."""
        new = self._draw() if projection is None else projection
        if tuple(new.shape) != tuple(self.projection.shape):
            raise ValueError(f"projection must have shape {tuple(self.projection.shape)}, got {tuple(new.shape)}")
        self.projection.copy_(new)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: PerformerOptions = self.options
        proj = self._draw().to(self.projection) if self.training and o.redraw == "step" else self.projection
        return performer_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            projection=proj,
            kernel=o.kernel,
            feature_eps=o.feature_eps,
            compat=o.compat,
        )

    def _feature_maps(self, dtype: torch.dtype) -> tuple[Callable[[Tensor], Tensor], FeatureFn]:
        """The causal forward's feature maps on the fixed ``projection`` (decoding happens in eval)."""
        o: PerformerOptions = self.options
        if self.training and o.redraw == "step":
            raise ValueError("performer with redraw='step' draws new features every training forward; decode in eval()")
        work = torch.promote_types(dtype, torch.float32)
        return favor_feature_maps(self.projection.to(work), scale=self.head_dim**-0.5, kernel=o.kernel, per_key=True)

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> FeatureState:
        """Running sums of the key features over the prompt, in the forward's chunks and stabiliser frames."""
        o: PerformerOptions = self.options
        key_features = self._feature_maps(k.dtype)[1]
        return feature_state(k, v, mask, key_features, o.num_features, scaled=o.kernel == "softmax")

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, FeatureState]:
        return feature_step(q, k, v, state, *self._feature_maps(q.dtype))


def _efficient_attention_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if causal:
        raise ValueError("efficient-attention 'performer' has no causal mode")
    check_no_dropout(args, "proj_drop")
    if args["proj_method"] not in ("favorp", "relu"):
        raise ValueError(f"proj_method {args['proj_method']!r} is not supported here (favorp, relu)")
    if args["cos_weighting"] or args["sample_scheme"] == "learnable" or not args["qkv_bias"]:
        raise ValueError("cos_weighting, sample_scheme='learnable' and qkv_bias=False are not supported here")
    favorp = args["proj_method"] == "favorp"
    return {
        "num_features": args["approx_attn_dim"],
        "kernel": "softmax" if favorp else "relu",
        "feature_eps": 1e-4 if favorp else 1e-3,
        "orthogonal": args["sample_scheme"] != "default",
        "redraw": "step" if args["sample_scheme"] == "default" else "fixed",
        "compat": "efficient-attention",
    }


def _efficient_attention_convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``eval_proj`` (``default``) or ``random_proj`` (``fixed``) ``(h, m, d)`` -> ``projection``."""
    renamed = {"eval_proj": "projection", "random_proj": "projection"}
    return {renamed.get(k, k): v for k, v in state_dict.items()}


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="performer",
        mechanism="performer",
        defaults={
            "approx_attn_dim": 64,
            "proj_method": "favorp",
            "cos_weighting": False,
            "sample_scheme": "default",
            **EA_COMMON,
        },
        options=_efficient_attention_options,
        convert=_efficient_attention_convert,
        notes="KernelizedAttention; approx_attn_dim -> num_features, favorp -> kernel softmax (feature_eps 1e-4), "
        "relu -> relu (1e-3); eval_proj/random_proj -> projection; sample_scheme default -> redraw step with "
        "i.i.d. draws (inject one with redraw(W) and redraw='fixed'); compat efficient-attention (E1, E2; "
        "orthogonal draws with the raw QR, no sign(diag R) correction, as the official code)",
    )
)


def _lra_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    m = args["rp_dim"]
    return {"num_features": m, "feature_eps": 1e-4 / math.sqrt(m), "compat": "nystromformer-lra"}


lra_entry(
    "performer",
    "performer",
    {"rp_dim": 256, "kernel_type": "relu"},
    _lra_options,
    renames={"attn.attn_fn.projection_matrix": "projection"},
    transform=lambda key, value, args: value.expand(args["num_head"], -1, -1).clone(),
    notes="performer-pytorch FastAttention: rp_dim -> num_features, kernel_type ignored (FAVOR+ either way, N6); "
    "projection_matrix (m, d) shared by heads -> projection; feature_eps 1e-4/sqrt(m); "
    "compat nystromformer-lra (N6, N7; gradients through the stabilisers, as performer-pytorch 0.15.0, except "
    "that an exact tie for a maximum sends its gradient to one element where torch.amax splits it; own draws "
    "use the raw QR, no sign(diag R) correction, as performer-pytorch)",
)
