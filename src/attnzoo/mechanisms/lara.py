"""``lara``: linear randomized attention with multiple importance sampling (efficient-attention ``LinearRA``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.mechanisms.sampling import (
    EA_COMMON,
    SampledAttention,
    check_grid_options,
    check_no_dropout,
    grid_options,
    grid_shape,
    proposal_net,
    zero_qkv_bias,
)
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.lara import MIS_TYPES, Landmarks, lara_attention, lara_landmarks, naive_lara_attention
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["LaraAttention", "LaraOptions"]

PROPOSALS = (
    "pool",
    "pool-mixed",
    "pool-vmixed",
    "no-param-pool",
    "no-param-pool-mixed",
    "no-param-pool-vmixed",
    "adaptive-1d",
)


@dataclass(frozen=True)
class LaraOptions:
    """Options of ``lara`` (efficient-attention's names and defaults).

    ``num_landmarks`` L proposals (``floor(sqrt(L))^2`` pooled cells on a 2D grid). ``proposal_gen``:
    ``adaptive-1d`` maps q, k token-wise (Linear + LayerNorm) before the segment means; ``pool*`` on a 2D
    grid (``attn_2d``) average-pools to ``sqrt(L) x sqrt(L)`` cells, then Linear + LayerNorm
    (``pool_module_type`` ``light``: per head, width d; ``dense``: all heads jointly); ``no-param-pool*``
    pools only; ``*-mixed`` / ``*-vmixed`` re-mix the key landmarks by their softmax similarity (plus
    ``log |v_bar|``). On 1D input every ``pool*`` variant is the parameter-free segment mean (official).
    ``mis_type``/``alpha_coeff``: see :func:`attnzoo.ops.lara.lara_attention`. Training draws one
    Gaussian per landmark (``use_antithetics``: also its mirror; ``use_multisample``: 2C independent
    ones) from a generator seeded with ``seed``. ``compat``: efficient-attention's padding quirks
    (E4: pads counted in 1D means; 2D pooling ignores the mask); off = padding changes no real row.
    """

    num_landmarks: int = 49
    proposal_gen: str = "pool"
    mis_type: str = "mis-opt"
    alpha_coeff: float = 1.0
    pool_module_type: str = "light"
    use_antithetics: bool = False
    use_multisample: bool = False
    attn_2d: bool = False
    image_height: int | None = None
    image_width: int | None = None
    compat: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("num_landmarks", self.num_landmarks, minimum=1)
        check_choice("proposal_gen", self.proposal_gen, PROPOSALS)
        check_choice("mis_type", self.mis_type, MIS_TYPES)
        check_choice("pool_module_type", self.pool_module_type, ("light", "dense"))
        if self.use_antithetics and self.use_multisample:
            raise ValueError("options use_antithetics and use_multisample exclude each other")
        if self.attn_2d and self.proposal_gen == "adaptive-1d":
            raise ValueError("proposal_gen='adaptive-1d' needs 1D input (attn_2d=False)")
        check_grid_options(self)


def lara_flops(n: int, d: int, options: LaraOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``2 N d (4 C + C_t) + 2 C^2 d``.

    C = min(L, N) landmarks (eval, one sample each): key logits, ``kappa``, query logits and the output
    are ``C x N x d`` each; ``mis-opt`` adds the ``C x N`` landmark-query softmax (C_t = C), and the
    ``C x C`` proposal matrix Lambda costs ``2 C^2 d``.
    """
    c = min(options.num_landmarks, n)
    c_t = c if options.mis_type != "mis-bh" else 0
    return 2.0 * n * d * (4 * c + c_t) + 2.0 * c * c * d


@register(
    "lara",
    options=LaraOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(N*C*d)",
        memory="O(N*C)",
    ),
    functional=lara_attention,
    reference=naive_lara_attention,
    flops=lara_flops,
    option_renames={"antithetic": "use_antithetics", "count_padding": "compat"},
)
class LaraAttention(SampledAttention):
    """LARA: randomized attention estimated with C landmark proposals by multiple importance sampling.

    Deterministic in eval (samples = proposal means); training draws one Gaussian per landmark (see
    :class:`~attnzoo.mechanisms.sampling.SampledAttention` for ``draws=``: one ``(B, H, C, d)``
    draw, ``(B, H, 2C, d)`` with ``use_multisample``). Attention dropout does not apply (no probabilities).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: LaraOptions = options
        learned = o.proposal_gen == "adaptive-1d" or (o.attn_2d and o.proposal_gen.startswith("pool"))
        width = dim if o.pool_module_type == "dense" and o.attn_2d else self.head_dim
        self.q_bar_gen = proposal_net(width) if learned else None
        self.k_bar_gen = proposal_net(width) if learned else None

    def padding_takes_part(self) -> bool:
        """Under ``compat`` 2D pooling ignores the mask: padded tokens' content enters the cells, as officially."""
        return self.options.compat and self.options.attn_2d

    def _pooled(self, x: Tensor, grid: tuple[int, int], weight: Tensor) -> Tensor:
        """Masked adaptive average pooling of ``(B, H, N, d)`` to ``(B, H, C, d)`` cells (row-major)."""
        b, h, _, d = x.shape
        side = max(1, int(self.options.num_landmarks**0.5))
        maps = (x * weight).permute(0, 1, 3, 2).reshape(b * h, d, *grid)
        pooled = F.adaptive_avg_pool2d(maps, side).reshape(b, h, d, -1).transpose(-1, -2)
        share = F.adaptive_avg_pool2d(weight[:, 0, :, 0].reshape(b, 1, *grid), side).reshape(b, 1, -1, 1)
        return pooled / share.clamp(min=torch.finfo(x.dtype).tiny)

    def _generate(self, net: nn.Module | None, x: Tensor) -> Tensor:
        if net is None:
            return x
        if self.options.pool_module_type == "dense" and self.options.attn_2d:
            b, h, c, d = x.shape  # heads mixed: channels ordered (head, d)
            return net(x.transpose(1, 2).reshape(b, c, h * d)).reshape(b, c, h, d).transpose(1, 2)
        return net(x)

    def landmarks(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Landmarks:
        """The proposal landmarks (spec §5 step 2): 1D segment means or 2D pooled cells, then the learned maps."""
        o: LaraOptions = self.options
        if not o.attn_2d:
            keep = None if mask is None or not o.compat else mask[:, None, :, None].to(q.dtype)
            q, k = (q, k) if keep is None else (q * keep, k * keep)  # official: zero pads, then map
            if o.proposal_gen == "adaptive-1d":
                q, k = self._generate(self.q_bar_gen, q), self._generate(self.k_bar_gen, k)
            return lara_landmarks(q, k, mask, o.num_landmarks, o.compat)
        grid = grid_shape(q.shape[-2], o.image_height, o.image_width)
        ones = torch.ones(q.shape[0], 1, q.shape[2], 1, dtype=q.dtype, device=q.device)
        weight = ones if mask is None or o.compat else mask[:, None, :, None].to(q.dtype)
        q_lm = self._generate(self.q_bar_gen, self._pooled(q, grid, weight))
        k_lm = self._generate(self.k_bar_gen, self._pooled(k, grid, weight))
        valid = self._pooled(ones, grid, weight)[:, 0, :, 0] > 0
        if o.proposal_gen.endswith("mixed"):
            sim = self.head_dim**-0.5 * k_lm @ k_lm.transpose(-1, -2)
            if o.proposal_gen.endswith("vmixed"):
                sim = sim + torch.log(self._pooled(v, grid, weight).norm(dim=-1) + 1e-4)[..., None, :]
            # empty (fully padded) cells take no part; the lowest finite logit keeps an all-empty image finite
            sim = sim.masked_fill(~valid[:, None, None, :], torch.finfo(sim.dtype).min)
            k_lm = torch.softmax(sim, dim=-1) @ k_lm
        return Landmarks(q_lm, k_lm, valid)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: LaraOptions = self.options
        lm = self.landmarks(q, k, v, mask)
        noise = None
        if self.training:
            b, h, c, d = lm.q.shape
            noise = self.gaussian((b, h, 2 * c if o.use_multisample else c, d), q)
        return lara_attention(
            q,
            k,
            v,
            mask=mask,
            mis_type=o.mis_type,
            alpha_coeff=o.alpha_coeff,
            landmarks=lm,
            noise=noise,
            antithetic=o.use_antithetics,
            count_padding=o.compat,
        )


def _official_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    check_no_dropout(args, "proj_drop")
    grid = grid_options(args["seq_shape"])
    keys = (
        "num_landmarks",
        "proposal_gen",
        "mis_type",
        "alpha_coeff",
        "pool_module_type",
        "use_antithetics",
        "use_multisample",
    )
    return {**{key: args[key] for key in keys}, **grid, "compat": True}


def _official_convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``{q,k}_bar_gen.{2,3}`` (pool, 2D) -> ``.{0,1}``; generators unused on 1D pool input are dropped (E5)."""
    pooled_2d = args["seq_shape"] is not None and args["proposal_gen"].startswith("pool")
    out = {}
    for key, value in zero_qkv_bias(state_dict).items():
        if key.startswith(("q_bar_gen.", "k_bar_gen.")):
            if args["proposal_gen"] != "adaptive-1d" and not pooled_2d:
                continue
            if pooled_2d:
                head, index, rest = key.split(".", 2)
                key = f"{head}.{int(index) - 2}.{rest}"
        out[key] = value
    return out


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="lara",
        mechanism="lara",
        defaults={
            "num_landmarks": 49,
            "kernel_size": None,
            "pool_module_type": "light",
            "mis_type": "mis-opt",
            "proposal_gen": "pool",
            "use_antithetics": False,
            "use_multisample": False,
            "alpha_coeff": 1.0,
            "seq_shape": None,
            **EA_COMMON,
        },
        options=_official_options,
        convert=_official_convert,
        notes="LinearRA; seq_shape=(H, W) for [B,H,W,C] input (2D proposals); compat=True (E4, 2D mask ignored); "
        "kernel_size, fp32, attn_drop unused (dead in the official code)",
    )
)
