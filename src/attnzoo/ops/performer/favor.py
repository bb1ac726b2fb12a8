"""``performer``: FAVOR+ / RFA linear attention with positive (or ReLU) random features."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from attnzoo.ops.common import check_padding_mask, check_qkv
from attnzoo.ops.common.precision import fp32_core
from attnzoo.ops.linear.kernel import FeatureFn, chunk_length, feature_attention
from attnzoo.ops.performer.features import draw_projection, projection_terms, stabilised_exp
from attnzoo.ops.performer.fused import favor_attention_fused

__all__ = [
    "COMPAT",
    "KERNELS",
    "check_performer_args",
    "favor_feature_maps",
    "performer_attention",
    "resolve_projection",
]

KERNELS = ("softmax", "relu")
COMPAT = ("none", "efficient-attention", "nystromformer-lra")


def check_performer_args(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, kernel: str, feature_eps: float, compat: str
) -> None:
    """Shape, mask and option checks shared by the fast path and the reference."""
    check_qkv(q, k, v)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs N == S, got N={q.shape[-2]}, S={k.shape[-2]}")
    check_padding_mask(mask, q.shape[0], k.shape[-2], q.device)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}; got {kernel!r}")
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPAT))}; got {compat!r}")
    if causal and (feature_eps or compat != "none"):
        raise ValueError("causal performer needs feature_eps=0 and compat='none' (both make rows see later keys)")


def resolve_projection(
    projection: Tensor | None, heads: int, num_features: int, dim: int, seed: int, like: Tensor, compat: str
) -> Tensor:
    """The given ``(H, m, d)`` projection (checked), or an orthogonal draw from ``seed`` (``raw_qr`` under compat)."""
    if projection is None:
        gen = torch.Generator().manual_seed(seed)
        return draw_projection(
            heads, num_features, dim, raw_qr=compat != "none", generator=gen, dtype=like.dtype, device=like.device
        )
    if projection.dim() != 3 or projection.shape[0] != heads or projection.shape[-1] != dim:
        raise ValueError(f"projection must have shape (H, m, d) = ({heads}, m, {dim}), got {tuple(projection.shape)}")
    return projection


def favor_feature_maps(
    projection: Tensor,
    *,
    scale: float,
    kernel: str = "softmax",
    feature_eps: float = 0.0,
    stabilise_pads: bool = False,
    per_key: bool = False,
    differentiable_stabilisers: bool = False,
) -> tuple[Callable[[Tensor], Tensor], FeatureFn]:
    """The query and key feature maps of :func:`performer_attention` for the engine ``feature_attention``.

    Queries ``(B, H, C, d) -> (B, H, C, m)``, stabilised by their row max (cancels in the ratio). Keys
    ``(chunk, real) -> (features, log scale (B, H, 1, 1))``, stabilised by the max of ``sqrt(s) W k`` over
    features and real keys of the chunk (``stabilise_pads``: over pads too, quirk E1), 0 at masked keys;
    ``per_key``: each key by its own largest log-feature, log scale ``(B, H, C, 1)`` (causal: a key's
    features never depend on later keys), and (without ``feature_eps``) queries without their ``s|x|^2/2``
    term (a row constant, it cancels in the ratio; with it, ``exp(-s|q|^2/2)`` pushed causal normalisers
    below fp32's range for large ``q``). ReLU features have no log scale.

    Args:
        projection: ``W``, ``(H, m, d)`` in the working dtype; scale: s; kernel: ``"softmax"`` or ``"relu"``;
        feature_eps: constant added to every query feature (the engine adds it to real keys).
        differentiable_stabilisers: let gradients flow through the row and key maxima, as performer-pytorch
            0.15.0 (the Nystromformer-LRA code's) does; with ``feature_eps`` they do not cancel, so this
            changes the gradients, not the output.
    """
    keep_graph = (lambda t: t) if differentiable_stabilisers else Tensor.detach
    root_m = math.sqrt(projection.shape[-2])
    log_root_m = 0.5 * math.log(projection.shape[-2])

    def query_features(x: Tensor) -> Tensor:
        proj_term, norm_term = projection_terms(x, projection, scale)
        if kernel == "relu":
            feats = torch.relu(proj_term) / root_m
        else:  # one fused shift per row: |x|^2 term (a row constant, dropped when causal), stabiliser, 1/sqrt(m)
            # with eps the |x|^2 term sets the features' weight against eps
            extra = norm_term + log_root_m if not per_key or feature_eps else proj_term.new_tensor(log_root_m)
            feats, _ = stabilised_exp(proj_term, extra, over_tokens=False, through_max=differentiable_stabilisers)
        return feats + feature_eps if feature_eps else feats

    def key_features(x: Tensor, real: Tensor | None) -> tuple[Tensor, Tensor | None]:
        proj_term, norm_term = projection_terms(x, projection, scale)
        keep = None if real is None else real[:, None, :, None]
        if kernel == "relu":
            feats = torch.relu(proj_term) / root_m
            return (feats if keep is None else feats * keep.to(feats.dtype)), None
        if not per_key:  # one stabiliser per (batch, head): the max of sqrt(s) W k over features and keys
            max_keep = None if stabilise_pads else keep
            return stabilised_exp(
                proj_term, norm_term + log_root_m, over_tokens=True, through_max=differentiable_stabilisers,
                max_keep=max_keep, zero_keep=keep,
            )  # fmt: skip
        # the largest log-feature of each key, the norm term included
        candidates = keep_graph(proj_term) - keep_graph(norm_term)
        if keep is not None:
            candidates = candidates.masked_fill(~keep, -math.inf)
        log_scale = candidates.amax(dim=-1, keepdim=True)  # (B, H, C, 1)
        shift = norm_term + log_scale.masked_fill(log_scale == -math.inf, 0.0) + log_root_m
        exponent = proj_term - shift if differentiable_stabilisers else proj_term.sub_(shift)
        if keep is not None:
            exponent = exponent.masked_fill_(~keep, -math.inf)
        return exponent.exp_(), log_scale

    return query_features, key_features


@fp32_core
def performer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    projection: Tensor | None = None,
    num_features: int = 256,
    kernel: str = "softmax",
    scale: float | None = None,
    feature_eps: float = 0.0,
    compat: str = "none",
    seed: int = 0,
    chunk_size: int | None = None,
) -> Tensor:
    """FAVOR+ attention: ``y_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)``.

    ``kernel="softmax"``: positive features ``phi(x) = m^-1/2 exp(sqrt(s) W x - s|x|^2/2 - c) + eps``,
    an unbiased estimate of ``exp(s q.k)`` (see :mod:`attnzoo.ops.performer.features`); the detached
    stabiliser ``c`` is the row max of ``sqrt(s) W x`` for a query and the max over features and real keys
    per (batch, head) for keys (it cancels exactly when ``feature_eps = 0``). ``kernel="relu"``:
    ``phi(x) = m^-1/2 relu(sqrt(s) W x) + eps``. O(N*m*d) time, chunked (no N x S matrix, no temporary
    growing with N); causal by chunked prefix sums; fp32 accumulation. Paper: Choromanski et al.,
    "Rethinking Attention with Performers" (ICLR 2021); spec: ``efficient-attention-eva-lara-longnet.md`` §4.

    Args:
        q: queries ``(B, H, N, d)``; k: keys ``(B, H, S, d)``; v: values ``(B, H, S, dv)``.
        mask: ``(B, S)`` bool padding mask, True = real key. Default: None.
        causal: row i uses keys j <= i (needs N == S, ``feature_eps=0``, ``compat="none"``).
        projection: ``W``, ``(H, m, d)``; default: an orthogonal draw of ``num_features`` rows from ``seed``
            (the official codes' raw-QR draw under ``compat``, see :func:`draw_projection`).
        num_features: m when ``projection`` is None. Default 256.
        kernel: ``"softmax"`` (FAVOR+) or ``"relu"``.
        scale: temperature s, default ``d^-1/2`` (``1/d`` under ``compat="nystromformer-lra"``).
        feature_eps: constant added to each feature (the official codes: 1e-4). Default 0 (unbiased).
        compat: reproduce an official code's quirks (``shared/specs/official-code-behaviour.md``):
            ``"efficient-attention"`` -- key stabiliser over all keys including pads (E1), normaliser
            clamped at 1e-2 (E2); ``"nystromformer-lra"`` (performer-pytorch) -- ``s = 1/d`` (N6), pads are
            zero keys that still count in the normaliser, one stabiliser over the whole batch (N7), and
            gradients through the stabilisers (performer-pytorch 0.15.0 does not detach its maxima; with
            ``feature_eps`` they change the gradients). Both draw the default projection with the raw QR
            (``draw_projection(raw_qr=True)``).
        seed: seed of the default projection.
        chunk_size: tokens per chunk (default: automatic).

    Returns:
        ``(B, H, N, dv)``; rows without a visible real key are 0 (by default).

    Raises:
        ValueError / TypeError: bad shapes, dtypes, mask or options.

    Reference: :func:`attnzoo.ops.performer.naive_performer_attention`.
    """
    check_performer_args(q, k, v, mask, causal, kernel, feature_eps, compat)
    _, h, _, d = q.shape
    work = torch.promote_types(q.dtype, torch.float32)
    proj = resolve_projection(projection, h, num_features, d, seed, q, compat).to(work)
    lra = compat == "nystromformer-lra"
    s = (1.0 / d if lra else d**-0.5) if scale is None else scale
    if lra and mask is not None:
        real = mask[:, None, :, None].to(k.dtype)
        k, v, mask = k * real, v * real, None
    stabilise_pads = compat == "efficient-attention"

    # chunks sized by the (B, H, C, m) feature tensors (the engine alone would size them by d)
    chunk = chunk_size or chunk_length(q.shape[0] * h, proj.shape[-2], max(q.shape[-2], k.shape[-2]), causal=causal)
    if not causal and kernel == "softmax" and not feature_eps and compat == "none" and q.numel() and k.numel():
        return favor_attention_fused(q.to(work), k.to(work), v.to(work), proj, mask, s, chunk).to(q.dtype)
    query_features, key_features = favor_feature_maps(
        proj, scale=s, kernel=kernel, feature_eps=feature_eps, stabilise_pads=stabilise_pads, per_key=causal,
        differentiable_stabilisers=lra,
    )  # fmt: skip
    return feature_attention(
        q.to(work),
        k.to(work),
        v.to(work),
        query_features=query_features,
        key_features=key_features,
        mask=mask,
        causal=causal,
        eps=feature_eps,
        global_frame=lra,
        min_denominator=1e-2 if compat == "efficient-attention" else 0.0,
        chunk_size=chunk,
    ).to(q.dtype)
