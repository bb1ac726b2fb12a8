"""``psf``: PSF-Attn, a product of input-dependent sparse chord factors applied to the values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.mechanisms.base import AttentionBase, split_heads
from attnzoo.official.registry import OfficialEntry, register_official
from attnzoo.ops.psf import naive_psf_attention, psf_attention
from attnzoo.options import check_field_types, check_int
from attnzoo.registry import Capabilities, register

__all__ = ["PSFAttention", "PSFOptions", "block_factor_count", "psf_flops"]


@dataclass(frozen=True)
class PSFOptions:
    """Options of ``psf`` (official ``PSFNet`` names in brackets).

    ``num_factors`` m [``n_W``]: chord factors, links ``i + 2^k`` for k < m (choose about
    ``log2 N``; offsets >= N alias, as in the official pathfinder config). ``factor_hidden`` /
    ``value_hidden``: hidden widths of the ``Ws`` / ``V`` networks (``Linear -> GELU -> Linear``).
    ``value_dim`` C [``n_channels_V``] (default ``dim``). ``use_residuals``: add V0 after every
    factor. ``mix_padding``: official padding behaviour (pads mixed like tokens, quirk P1).
    ``out_proj``: a ``Linear(C, dim)`` after the mixer; without it the module returns the mixer's
    ``(B, N, C)`` output, as the official mixer does.
    """

    num_factors: int = 12
    factor_hidden: int = 128
    value_hidden: int = 128
    value_dim: int | None = None
    use_residuals: bool = True
    mix_padding: bool = False
    out_proj: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("num_factors", "factor_hidden", "value_hidden"):
            check_int(name, getattr(self, name), minimum=1)
        if self.value_dim is not None:
            check_int("value_dim", self.value_dim, minimum=1)


def psf_flops(n: int, d: int, options: PSFOptions, causal: bool) -> float:
    """Forward FLOPs per (batch, head) of the factor product: m factors x (m + 1) links x N rows x
    d multiply-adds, ``2 m (m + 1) N d`` (the factor networks are not counted)."""
    m = options.num_factors
    return 2.0 * m * (m + 1) * n * d


class _MLP(nn.Module):
    """The official ``MakeMLP`` with cfg ``[hidden, 'GELU']``: ``Linear -> GELU -> Linear``."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


@register(
    "psf",
    options=PSFOptions,
    capabilities=Capabilities(
        causal=False,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(N*m^2*d)",
        memory="O(N*m*d)",
        pattern=None,
        convex=False,
    ),
    functional=psf_attention,
    reference=naive_psf_attention,
    flops=psf_flops,
)
class PSFAttention(AttentionBase):
    """PSF-Attn: per-token chord factor values from small networks, multiplied out on V (O(N log^2 N)).

    ``fs[t]`` maps each token to its row of factor t (``m + 1`` values per head), ``g`` gives V0;
    attention dropout (training) drops V0, whose dropped copy is also the residual (official).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: PSFOptions = options
        self.value_dim = o.value_dim or dim
        if self.value_dim % num_heads:
            raise ValueError(f"option value_dim ({self.value_dim}) must be divisible by num_heads ({num_heads})")
        del self.qkv
        links = num_heads * (o.num_factors + 1)
        self.fs = nn.ModuleList(_MLP(dim, o.factor_hidden, links) for _ in range(o.num_factors))
        self.g = _MLP(dim, o.value_hidden, self.value_dim)
        self.proj = nn.Linear(self.value_dim, dim) if o.out_proj else nn.Identity()

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, N, dim)`` -> factor values packed as ``(B, H, N, m (m + 1))`` (twice) and V0 ``(B, H, N, C/H)``."""
        b, n, _ = x.shape
        m, h = self.options.num_factors, self.num_heads
        rows = torch.stack([f(x).view(b, n, h, m + 1) for f in self.fs], 3)  # (B, N, H, m, m + 1)
        factors = rows.permute(0, 2, 1, 3, 4).reshape(b, h, n, m * (m + 1))
        return factors, factors, split_heads(self.g(x), h)

    def padding_takes_part(self) -> bool:
        """Under ``mix_padding`` (P1) padded tokens are mixed like real ones, their content included, as officially."""
        return self.options.mix_padding

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: PSFOptions = self.options
        b, h, n, _ = q.shape
        factors = q.view(b, h, n, o.num_factors, o.num_factors + 1).transpose(2, 3)
        p = self.attention_dropout()
        v0 = F.dropout(v, p) if p > 0 else v
        return psf_attention(
            v0, v0, v0, mask=mask, factors=factors, use_residuals=o.use_residuals, mix_padding=o.mix_padding
        )

    def merge(self, out: Tensor) -> Tensor:
        """``(B, H, N, C/H) -> (B, N, C)`` followed by ``proj`` (``Linear(C, dim)`` or the identity)."""
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, self.value_dim))


def _hidden(cfg: Any, name: str) -> int:
    """The hidden width of an official MLP config ``[h, 'GELU']`` (the only form the configs use)."""
    if not (isinstance(cfg, (list, tuple)) and len(cfg) == 2 and isinstance(cfg[0], int) and cfg[1] == "GELU"):
        raise ValueError(f"{name} must be [hidden, 'GELU'] (the official configs' form), got {cfg!r}")
    return cfg[0]


def _mixer_options(
    num_factors: int, factor_hidden: int, value_hidden: int, value_dim: int, args: dict[str, Any]
) -> dict[str, Any]:
    """``psf`` options of an official PSF mixer: one head, pads mixed (P1), no output projection."""
    return {
        "num_factors": num_factors,
        "factor_hidden": factor_hidden,
        "value_hidden": value_hidden,
        "value_dim": value_dim,
        "use_residuals": bool(args["use_residuals"]),
        "mix_padding": True,
        "out_proj": False,
    }


def _psf_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if args["variant"] == "block":
        raise ValueError(
            "variant 'block' is attention_block.PSFNet, whose constructor differs: "
            "use from_official('sparse-factorization', 'block', args={vocab_size, embedding_size, max_seq_len, ...})"
        )
    if args["variant"] not in ("lra", "synth"):
        raise ValueError(f"variant must be 'lra' or 'synth' (or the 'block' entry), got {args['variant']!r}")
    return _mixer_options(args["n_W"], _hidden(args["Ws"], "Ws"), _hidden(args["V"], "V"), args["n_channels_V"], args)


def block_factor_count(max_seq_len: int) -> int:
    """``attention_block.PSFNet``'s ``n_W = ceil(log2(max_seq_len))``, in integer arithmetic.

    Raises:
        ValueError: ``max_seq_len < 2`` (no factor at all).
    """
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ValueError(f"max_seq_len must be an int >= 2 (n_W = ceil(log2 max_seq_len) >= 1), got {max_seq_len!r}")
    return (max_seq_len - 1).bit_length()


def _block_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    width = args["embedding_size"]
    return _mixer_options(block_factor_count(args["max_seq_len"]), width, width, width, args)


_OUTSIDE_MIXER = re.compile(r"(embedding|pos_embedding|apc_embedding|final|init_linear|head)\.")


def convert_psfnet(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """Keep the mixer's ``fs.{m}.network.{0,2}`` and ``g.network.{0,2}`` (same names here); the
    embeddings, head and ``final`` layer of a whole ``PSFNet`` are outside the mixer and dropped.

    Raises:
        ValueError: any other tensor (named).
    """
    mixer = {k: v for k, v in state_dict.items() if k.startswith(("fs.", "g."))}
    unknown = sorted(k for k in state_dict if k not in mixer and not _OUTSIDE_MIXER.match(k))
    if unknown:
        raise ValueError(f"unexpected official tensors {unknown}")
    return mixer


register_official(
    OfficialEntry(
        source="sparse-factorization",
        name="psf",
        mechanism="psf",
        defaults={
            "n_vec": 1024,
            "n_W": 10,
            "Ws": [128, "GELU"],
            "V": [128, "GELU"],
            "n_channels_V": 32,
            "use_residuals": False,
            "variant": "lra",
        },
        options=_psf_options,
        convert=convert_psfnet,
        notes="the PSF mixer (input of g -> V before dropout3), num_heads=1; mix_padding on (P1), out_proj off; "
        "variant lra (LRA/psf.py) or synth (SyntheticExperiments/psf.py); dropout2_p (V0, training) is the "
        "module's dropout, set by from_official_model (from_official builds every entry with dropout 0)",
    )
)

register_official(
    OfficialEntry(
        source="sparse-factorization",
        name="block",
        mechanism="psf",
        defaults={  # attention_block.py's constructor (no defaults of its own: the values of its example net)
            "vocab_size": 256,
            "embedding_size": 128,
            "max_seq_len": 1024,
            "use_cuda": True,
            "use_residuals": False,
            "dropout1_p": 0.0,
            "dropout2_p": 0.0,
            "dropout3_p": 0.0,
        },
        options=_block_options,
        convert=convert_psfnet,
        notes="the mixer of attention_block.PSFNet (input of g -> V before dropout3), num_heads=1, dim = "
        "embedding_size: n_W = ceil(log2 max_seq_len), Ws = V = [embedding_size, GELU], C = embedding_size; "
        "vocab_size, use_cuda, dropout1_p, dropout3_p act outside the mixer; dropout2_p as for psf",
    )
)
