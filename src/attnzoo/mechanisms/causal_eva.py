"""``causal_eva``: causal EVA (efficient-attention ``CausalEVAttention``, the fairseq decoder attention)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.mechanisms.eva import T5_KEY
from attnzoo.mechanisms.sampling import SampledAttention, check_no_dropout, proposal_net
from attnzoo.official import OfficialEntry, register_official
from attnzoo.ops.eva import causal_eva_attention, naive_causal_eva_attention
from attnzoo.ops.eva.causal import causal_eva_chunk_size, causal_eva_segments
from attnzoo.ops.eva.chunks import t5_num_buckets
from attnzoo.ops.eva.decode import ChunkState, EvaDecoding, chunk_state, chunk_step
from attnzoo.options import check_choice, check_field_types, check_int
from attnzoo.registry import Capabilities, register
from attnzoo.sparse import EXECUTOR_NAMES

__all__ = ["CausalEvaAttention", "CausalEvaOptions"]


@dataclass(frozen=True)
class CausalEvaOptions:
    """Options of ``causal_eva`` (efficient-attention's names).

    ``window_size`` w (local blocks; ``overlap_window`` adds a full window to the left), chunks of
    ``chunk_size`` r tokens (w a multiple of r; default r = w), or ``floor(N' / num_chunks)``.
    ``adaptive_proj``: ``qk`` (Linear + LayerNorm maps of the chunk means) or ``no-ln``; the official
    command-line default ``default`` crashes the official module and is rejected here (quirk E12).
    ``use_t5_rpe``: one T5 bias shared by all heads. ``compat``: official quirks (chunk means over all
    r slots, chunks inside the window seen twice, T5 offset). ``seed`` seeds the training draws.
    """

    window_size: int = 4
    chunk_size: int | None = None
    num_chunks: int | None = None
    overlap_window: bool = False
    adaptive_proj: str = "qk"
    use_t5_rpe: bool = False
    compat: bool = False
    seed: int | None = None
    executor: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_int("window_size", self.window_size, minimum=1)
        for name in ("chunk_size", "num_chunks"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        if self.chunk_size is not None and self.window_size % self.chunk_size:
            raise ValueError(f"window_size ({self.window_size}) must be a multiple of chunk_size ({self.chunk_size})")
        if self.adaptive_proj == "default":
            raise ValueError("adaptive_proj='default' crashes the official CausalEVAttention; use 'qk' or 'no-ln'")
        check_choice("adaptive_proj", self.adaptive_proj, ("qk", "no-ln"))
        check_choice("executor", self.executor, EXECUTOR_NAMES)


def causal_eva_flops(n: int, d: int, options: CausalEvaOptions, causal: bool) -> float:
    """Forward matmul FLOPs per (batch, head): ``4 N d (w + e + C + 1)``, C = N' / r chunks.

    Local scores and values over ``w + e`` keys (about half of them when causal is not counted
    separately: the block is computed whole), the chunk summaries (``4 N d``) and C chunk logits and
    values per query. With a fixed ``chunk_size`` C grows with N (cost ~ N^2 / r, as official).
    """
    w = options.window_size
    e = w if options.overlap_window else 0
    chunks = -(-n // w) * w // causal_eva_chunk_size(n, w, options.chunk_size, options.num_chunks)
    return 4.0 * n * d * (w + e + chunks + 1)


@register(
    "causal_eva",
    options=CausalEvaOptions,
    capabilities=Capabilities(
        causal=True,
        key_padding_mask=True,
        cross_attention=False,
        exact=False,
        deterministic=True,
        time="O(N*(w+N/r)*d)",
        memory="O(N*(N/r+d))",
        pattern="blockwise_window",
        # torch.compile(fullgraph=True) fails: the attnzoo.sparse plan decides in Python from layout tensors
        # (SparsePlan's diagonal-only check, the auto executor's density share): data-dependent under dynamo
        # (only where the window divides N, no dropout or RPE, does the grouped path alone take the call)
        compile_fullgraph=False,
    ),
    functional=causal_eva_attention,
    reference=naive_causal_eva_attention,
    flops=causal_eva_flops,
)
class CausalEvaAttention(SampledAttention):
    """Causal EVA: exact local blocks plus randomized summaries of earlier chunks, one softmax.

    Deterministic in eval; training draws one ``(B, H, C, d)`` Gaussian (``draws=[noise]``) and applies
    ``dropout`` to the joint attention probabilities, as the official module does. Decodes token by
    token in eval (:mod:`attnzoo.ops.eva.decode`), equal to the training forward (the official
    incremental path is broken, E12); not with ``num_chunks`` (r would follow the total length).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__(dim, num_heads, causal=causal, dropout=dropout, options=options)
        o: CausalEvaOptions = options
        layer_norm = o.adaptive_proj == "qk"
        self.adaptive_mu_q = proposal_net(self.head_dim, layer_norm)
        self.adaptive_mu_k = proposal_net(self.head_dim, layer_norm)
        e = o.window_size if o.overlap_window else 0
        self.rel_pos_bias = nn.Embedding(t5_num_buckets(o.window_size, e), 1) if o.use_t5_rpe else None

    def chunk_keys(self, q_bar: Tensor, k_bar: Tensor) -> tuple[Tensor, Tensor]:
        """``k_hat = f_k(k_bar)``, ``mu = f_q(q_bar) + k_hat``."""
        k_hat = self.adaptive_mu_k(k_bar)
        return k_hat, self.adaptive_mu_q(q_bar) + k_hat

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        o: CausalEvaOptions = self.options
        b, h, n, d = q.shape
        noise = None
        if self.training:
            r = causal_eva_chunk_size(n, o.window_size, o.chunk_size, o.num_chunks)
            noise = self.gaussian((b, h, causal_eva_segments(mask, b, n, o.window_size, r, o.compat).count, d), q)
        return causal_eva_attention(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            window_size=o.window_size,
            chunk_size=o.chunk_size,
            num_chunks=o.num_chunks,
            overlap_window=o.overlap_window,
            t5_table=None if self.rel_pos_bias is None else self.rel_pos_bias.weight,
            chunk_keys=self.chunk_keys,
            noise=noise,
            dropout_p=self.attention_dropout(),
            compat=o.compat,
            executor=o.executor,
        )

    def _decoding(self, q: Tensor) -> EvaDecoding:
        o: CausalEvaOptions = self.options
        if self.training:
            raise ValueError("causal_eva decodes in eval() only (training draws chunk samples and drops probabilities)")
        if o.chunk_size is None and o.num_chunks is not None:
            raise ValueError("causal_eva with num_chunks cannot decode: the chunk size follows the total length (E11)")
        return EvaDecoding(
            window=o.window_size,
            extension=o.window_size if o.overlap_window else 0,
            chunk=causal_eva_chunk_size(0, o.window_size, o.chunk_size, None),
            compat=o.compat,
            scale=q.shape[-1] ** -0.5,
            t5_table=None if self.rel_pos_bias is None else self.rel_pos_bias.weight,
            chunk_keys=self.chunk_keys,
        )

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> ChunkState:
        """The prompt's local keys the next query sees, its completed chunks' summaries, the open chunk's queries."""
        return chunk_state(q, k, v, mask, self._decoding(q))

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, ChunkState]:
        if not isinstance(state, ChunkState):
            raise TypeError(f"causal_eva decodes from a ChunkState, got {type(state).__name__}")
        return chunk_step(q, k, v, state, self._decoding(q))


def _official_options(args: dict[str, Any], causal: bool) -> dict[str, Any]:
    if args["causal"] != causal:
        raise ValueError(f"official attn_args.causal={args['causal']} but causal={causal}; pass the same flag")
    if args["kdim"] is not None or args["vdim"] is not None:
        raise ValueError("kdim/vdim need self_attention=False, which is not supported (fairseq passes None)")
    check_no_dropout(args, "dropout")  # the official dropout is attnzoo.build(..., dropout=p); set module.dropout
    if not args["self_attention"] or args["q_noise"]:
        raise ValueError("only self_attention=True and q_noise=0 (as fairseq builds it) are supported")
    chunk = {} if args["chunk_size"] is not None else {"num_chunks": args["num_chunks"]}
    keys = ("window_size", "chunk_size", "overlap_window", "adaptive_proj", "use_t5_rpe")
    return {**{key: args[key] for key in keys}, **chunk, "compat": True}


def _official_convert(state_dict: dict[str, Tensor], args: dict[str, Any]) -> dict[str, Tensor]:
    """``q/k/v_proj`` -> fused ``qkv`` (rows q, k, v); ``out_proj`` -> ``proj``; T5 table under our name."""
    out = {
        k: v for k, v in state_dict.items() if not k.startswith(("q_proj.", "k_proj.", "v_proj.", "out_proj.", T5_KEY))
    }
    if T5_KEY in state_dict:
        out["rel_pos_bias.weight"] = state_dict[T5_KEY]
    for kind in ("weight", "bias"):
        out[f"qkv.{kind}"] = torch.cat([state_dict[f"{p}_proj.{kind}"] for p in "qkv"])
        out[f"proj.{kind}"] = state_dict[f"out_proj.{kind}"]
    return out


register_official(
    OfficialEntry(
        source="efficient-attention",
        name="causal_eva",
        mechanism="causal_eva",
        defaults={
            "embed_dim": None,
            "kdim": None,
            "vdim": None,
            "dropout": 0.0,
            "bias": True,
            "self_attention": True,
            "q_noise": 0.0,
            "qn_block_size": 8,
            "adaptive_proj": "qk",
            "num_chunks": None,
            "chunk_size": None,
            "causal": False,
            "use_t5_rpe": False,
            "window_size": 4,
            "overlap_window": False,
        },
        options=_official_options,
        convert=_official_convert,
        notes="CausalEVAttention (fairseq, time-major [T,B,C] there); attn_args flattened into args; "
        "adaptive_proj 'qk' (CLI default 'default' crashes officially, E12); dropout must be 0 here (set "
        "module.dropout for training); compat=True",
    )
)
