"""The Transformer encoder every benchmark model shares: embeddings, positions, blocks with any attention.

Reads top-down (nanoGPT style): ``ModelConfig``, ``InputEmbedding``, ``MLP``, ``Block``, ``Encoder``.
The layer follows the Nystromformer-LRA code (spec diffuser-psf-butterfly-nystrom §5.2): pre-LN,
``x + Drop(Attn(LN x))``, ``x + MLP(LN x)`` with ``MLP = Linear -> GELU -> Drop -> Linear -> Drop``,
a final LN and the output multiplied by the mask. ``norm="post"`` gives the original post-LN layer.

Shape legend: B batch, N tokens given to the model, T tokens inside the encoder (N / patch_size^2 for
patches, plus one for a CLS token), F continuous features, p patch side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.models.positions import POSITION_KINDS, make_positions
from attnzoo.registry import make_options

__all__ = [
    "ARCHS",
    "CLS_POOLINGS",
    "POOLINGS",
    "STRUCTURES",
    "Block",
    "Encoder",
    "InputEmbedding",
    "ModelConfig",
    "StackState",
    "append_cls_id",
]

POOLINGS = ("cls", "cls-id", "mean", "mean-all")
CLS_POOLINGS = ("cls", "cls-id")  # the poolings that read a CLS token at position 0
ARCHS = ("encoder", "vit")  # ModelConfig.arch: attnzoo.models.heads.build_model
STRUCTURES = ("attnzoo", "nystromformer-lra")  # ModelConfig.structure (Encoder._as_nystromformer_lra)


@dataclass
class ModelConfig:
    """Architecture of an encoder model; every field has a default and can be set from YAML or the CLI.

    Attributes:
        attention: registered mechanism name (attnzoo.available()).
        attention_options: fields of attnzoo.options(attention), e.g. {window_size: 32}.
        layer_attention: per-layer [{name: ..., **options}, ...] (one entry per layer; empty = attention
            everywhere).
        dim: model width D (= qkv width).
        num_heads: attention heads.
        num_layers: encoder blocks.
        mlp_dim: hidden width of the block MLP.
        head_hidden: hidden width of the classifier head; 0 = mlp_dim.
        dropout: residual, MLP and embedding dropout.
        attention_dropout: dropout on attention weights (where the mechanism has them).
        norm: pre (Nystromformer-LRA) or post (original Transformer).
        pooling: cls (a learned CLS vector prepended), cls-id (LRA append_cls: token id vocab-1 first, the
            last input token dropped), mean (over real tokens) or mean-all (over all N, Nystromformer-LRA).
        positions: position encoding: learned, sinusoidal, learned2d, sinusoidal2d or none (POSITION_KINDS).
        patch_size: images: side of square patches (1 = one token per pixel).
        causal: causal attention (language-model style tasks).
        decoder_attention: encoder-decoder (seq2seq) tasks: the decoder's causal self-attention.
        decoder_attention_options: options of decoder_attention.
        cross_attention: the decoder's cross-attention to the encoder output (a cross_attention-capable
            mechanism).
        cross_attention_options: options of cross_attention.
        decoder_layers: decoder depth; 0 = num_layers.
        arch: encoder (this module's :class:`Encoder` with the task heads) or vit (image tasks: the
            efficient ViT of ``attnzoo.models.vit`` with dim, num_heads, num_layers, mlp_dim / dim as MLP
            ratio, dropout, attention_dropout, patch_size and the attention; positions, norm, pooling and
            head_hidden do not apply).
        vit_options: arch vit: further ``ViTConfig`` fields (drop_path_rate, use_glu, patchify_stem, pos_emb).
        structure: attnzoo (every layer owns its parameters; attention projections N(0, 0.02), zero bias) or
            nystromformer-lra (the official LRA model's parameter layout and init: linformer layers share one
            ``E``, layer 0's ``e_proj``, as the official class-level ``E``; reformer's ``qkv`` has no bias, as
            HF's LSH projections: zero and frozen; the attention projections ``qkv``/``proj`` keep PyTorch's
            ``nn.Linear`` init, as the official ``W_q``, ``W_k``, ``W_v`` and ``ff``; attention_dropout acts in
            softmax only, as the official kernels: linformer's and HF reformer's have none).
    """

    attention: str = "softmax"
    attention_options: dict[str, Any] = field(default_factory=dict)
    layer_attention: list[dict[str, Any]] = field(default_factory=list)
    dim: int = 64
    num_heads: int = 2
    num_layers: int = 2
    mlp_dim: int = 128
    head_hidden: int = 0
    dropout: float = 0.1
    attention_dropout: float = 0.1
    norm: str = "pre"
    pooling: str = "mean"
    positions: str = "learned"
    patch_size: int = 1
    causal: bool = False
    decoder_attention: str = "softmax"
    decoder_attention_options: dict[str, Any] = field(default_factory=dict)
    cross_attention: str = "softmax"
    cross_attention_options: dict[str, Any] = field(default_factory=dict)
    decoder_layers: int = 0
    arch: str = "encoder"
    vit_options: dict[str, Any] = field(default_factory=dict)
    structure: str = "attnzoo"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any invalid value."""
        known = {spec.name for spec in attnzoo.available()}
        names = [self.attention] + [str(layer.get("name", self.attention)) for layer in self.layer_attention]
        for name in names:
            if name not in known:
                raise ValueError(f"model.attention: unknown mechanism {name!r}; available: {', '.join(sorted(known))}")
        for name in ("dim", "num_heads", "num_layers", "mlp_dim", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.layer_attention and len(self.layer_attention) != self.num_layers:
            raise ValueError(
                f"model.layer_attention has {len(self.layer_attention)} entries for {self.num_layers} layers"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        choices = {
            "norm": ("pre", "post"),
            "pooling": POOLINGS,
            "positions": POSITION_KINDS,
            "arch": ARCHS,
            "structure": STRUCTURES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")

    def layer_spec(self, index: int, length: int | None = None) -> tuple[str, dict[str, Any]]:
        """``(mechanism name, options)`` of layer ``index`` in a model reading at most ``length`` tokens.

        A mechanism whose options class names a ``layer_index_option`` (butterfly's ``stage``) gets
        the layer index in that option unless it is set, as the official models do. In a causal
        model, one that names a ``max_length_option`` (butterfly's ``max_seq_len``) gets ``length``
        unless it is set, so its pattern does not depend on how many tokens have been decoded.
        """
        if not self.layer_attention:
            name, entry = self.attention, dict(self.attention_options)
        else:
            entry = dict(self.layer_attention[index])
            name = str(entry.pop("name", self.attention))
        per_layer = getattr(attnzoo.options(name), "layer_index_option", None)
        if per_layer is not None:
            entry.setdefault(per_layer, index)
        fixed_length = getattr(attnzoo.options(name), "max_length_option", None)
        if fixed_length is not None and self.causal and length is not None:
            entry.setdefault(fixed_length, length)
        return name, entry

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)


def append_cls_id(inputs: Tensor, mask: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """The LRA code's ``append_cls``: id ``vocab_size - 1`` in front, the last token dropped (N stays N).

    ``inputs: (B, N)`` ids and ``mask: (B, N)`` bool (True = real) -> both shifted right by one, with
    the CLS id (a real token) at position 0. A sequence that fills all N positions loses its last token.
    """
    cls_ids = inputs.new_full((inputs.shape[0], 1), vocab_size - 1)
    cls_mask = mask.new_ones(mask.shape[0], 1)
    return torch.cat([cls_ids, inputs[:, :-1]], dim=1), torch.cat([cls_mask, mask[:, :-1]], dim=1)


class InputEmbedding(nn.Module):
    """Ids, pixels, patches or features to vectors: ``(B, N) | (B, N, F) -> (B, T, D)`` plus the new mask.

    tokens/bytes/pixels: ``Embedding(vocab, D)``, N(0, 0.02) (LRA embeds raw pixel values 0..255).
    continuous: ``Linear(F, D)``. pixels with ``patch_size > 1``: pixels scaled to [0, 1], cut into
    p x p patches (ViT), ``Linear(p*p, D)``; a patch is real if any of its pixels is.
    """

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind, self.patch = task.input_kind, cfg.patch_size
        self.image_shape: tuple[int, int] | None = tuple(task.image_shape) if task.image_shape else None
        self.grid = self.image_shape
        if self.patch > 1:
            if self.kind != "pixels" or self.image_shape is None:
                raise ValueError(f"model.patch_size > 1 needs an image task; {task.name!r} has {self.kind} inputs")
            h, w = self.image_shape
            if h % self.patch or w % self.patch:
                raise ValueError(f"model.patch_size {self.patch} does not divide the image shape {self.image_shape}")
            self.grid = (h // self.patch, w // self.patch)
            self.proj: nn.Module = nn.Linear(self.patch * self.patch, cfg.dim)
        elif self.kind == "continuous":
            self.proj = nn.Linear(task.num_features, cfg.dim)
        else:
            self.proj = nn.Embedding(task.vocab_size, cfg.dim)
            nn.init.normal_(self.proj.weight, std=0.02)
        self.length = self.grid[0] * self.grid[1] if self.patch > 1 and self.grid else task.seq_len

    def forward(self, inputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.patch == 1:
            return self.proj(inputs), mask
        b, p = inputs.shape[0], self.patch
        gh, gw = self.grid  # type: ignore[misc]
        pix = inputs.float().div(255.0).view(b, gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(b, gh * gw, p * p)
        patch_mask = mask.view(b, gh, p, gw, p).any(dim=4).any(dim=2).reshape(b, gh * gw)
        return self.proj(pix), patch_mask


class MLP(nn.Module):
    """``Linear(D, D_h) -> GELU -> Drop -> Linear(D_h, D) -> Drop``."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """One Transformer layer with attention ``name`` built by :func:`attnzoo.build`: ``(B, T, D) -> (B, T, D)``."""

    def __init__(self, cfg: ModelConfig, name: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.pre_norm = cfg.norm == "pre"
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        # a ready options instance: an option set to None (reformer's hash_seed) stays None, not the default
        ready = make_options(attnzoo.options(name), options, context=name)
        # the official LRA model drops attention probabilities in SoftmaxAttention only
        official_lra = cfg.structure == "nystromformer-lra" and name != "softmax"
        dropout = 0.0 if official_lra else cfg.attention_dropout
        self.attn = attnzoo.build(name, cfg.dim, cfg.num_heads, causal=cfg.causal, dropout=dropout, options=ready)
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim, cfg.dropout)

    def attention_input(self, x: Tensor) -> Tensor:
        """What the attention module sees for residual stream ``x``."""
        return self.norm1(x) if self.pre_norm else x

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.mlp(x))

    def prefill(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, DecodeState]:
        """:meth:`forward` over a prompt ``x: (B, T, D)`` (causal attention), plus the attention's decoding state."""
        return self._layer(x, lambda h: self.attn.prefill(h, mask))

    def step(self, x: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """:meth:`forward` of one new token ``x: (B, 1, D)`` after ``state``: ``(B, 1, D)`` and the new state."""
        return self._layer(x, lambda h: self.attn.step(h, state))

    def _layer(self, x: Tensor, attend: Callable[[Tensor], tuple[Tensor, DecodeState]]) -> tuple[Tensor, DecodeState]:
        """The layer with attention ``attend(h) -> (out, state)`` (the residual wiring of :meth:`forward`)."""
        if self.pre_norm:
            out, state = attend(self.norm1(x))
            x = x + self.drop(out)
            return x + self.mlp(self.norm2(x)), state
        out, state = attend(x)
        x = self.norm1(x + self.drop(out))
        return self.norm2(x + self.mlp(x)), state


@dataclass
class StackState:
    """Decoding state of an :class:`Encoder` stack: the next token's position and one state per layer."""

    length: int  # tokens consumed so far (prompt incl. padding, plus decoded ones) = the next position
    layers: list[DecodeState]

    def select(self, index: Tensor) -> StackState:
        """A new state keeping batch rows ``index`` (``(B',)`` long, repeats allowed), in that order."""
        return StackState(self.length, [layer.select(index) for layer in self.layers])

    def memory_bytes(self) -> int:
        """Bytes held by every layer's state."""
        return sum(layer.memory_bytes() for layer in self.layers)


class Encoder(nn.Module):
    """Embedding, positions, optional CLS token, ``num_layers`` blocks, final LN (pre-LN) and ``* mask``.

    ``forward(inputs (B, N) | (B, N, F), mask (B, N) bool) -> (h (B, T, D), mask (B, T))``.
    """

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = InputEmbedding(task, cfg)
        self.positions = make_positions(cfg.positions, self.embed.length, cfg.dim, self.embed.grid)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pooling == "cls" else None
        if cfg.pooling == "cls-id" and not isinstance(self.embed.proj, nn.Embedding):
            raise ValueError("model.pooling 'cls-id' needs token inputs (an embedding table and model.patch_size 1)")
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, *cfg.layer_spec(i, self.embed.length)) for i in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim) if cfg.norm == "pre" else nn.Identity()
        if cfg.structure == "nystromformer-lra":
            self._as_nystromformer_lra()

    def _as_nystromformer_lra(self) -> None:
        """The official LRA model's layout and init: one linformer ``E`` for every layer, bias-free reformer
        ``qkv``, and ``nn.Linear``'s own init for the attention projections (U(+-1/sqrt(fan_in)) weights and
        biases, as the official ``W_q``/``W_k``/``W_v``/``ff``; attnzoo's default is N(0, 0.02), zero bias).

        Raises:
            ValueError: linformer layers whose ``E`` shapes differ (one tensor cannot serve them all), or an
                attention without ``qkv`` (psf).
        """
        linformer = [block.attn for block in self.blocks if block.name == "linformer"]
        for attn in linformer[1:]:
            if attn.e_proj.shape != linformer[0].e_proj.shape:
                raise ValueError(
                    "model.structure nystromformer-lra shares one linformer E across layers, but their shapes "
                    f"differ: {tuple(linformer[0].e_proj.shape)} and {tuple(attn.e_proj.shape)}"
                )
            attn.e_proj = linformer[0].e_proj
        for block in self.blocks:
            if not isinstance(getattr(block.attn, "qkv", None), nn.Linear):
                raise ValueError(
                    f"model.structure nystromformer-lra needs attentions with qkv and proj projections (the "
                    f"official W_q, W_k, W_v and ff); {block.name!r} has no qkv"
                )
            block.attn.qkv.reset_parameters()
            block.attn.proj.reset_parameters()
            if block.name == "reformer":
                with torch.no_grad():
                    block.attn.qkv.bias.zero_()
                block.attn.qkv.bias.requires_grad_(False)

    def embed_inputs(self, inputs: Tensor, mask: Tensor, start: int = 0) -> tuple[Tensor, Tensor]:
        """Embedded, position-encoded tokens ``(B, T, D)`` (CLS first when pooling is "cls") and their mask.

        ``start``: position of the first token (> 0 for tokens decoded after a prompt). Pooling "cls-id"
        first applies :func:`append_cls_id` to the ids and the mask (T = N).
        """
        if self.cfg.pooling == "cls-id":
            inputs, mask = append_cls_id(inputs, mask, self.embed.proj.num_embeddings)
        x, mask = self.embed(inputs, mask)
        x = self.positions(x, start)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.drop(x), mask

    def forward(self, inputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = self.embed_inputs(inputs, mask)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) * mask[..., None].to(x.dtype), mask

    @property
    def max_length(self) -> int | None:
        """Most tokens one sequence can hold (the position table's length); None without positions."""
        return None if self.cfg.positions == "none" else self.embed.length

    def prefill(self, inputs: Tensor, mask: Tensor | None = None) -> tuple[Tensor, StackState]:
        """A causal stack over a prompt ``inputs: (B, T)`` ids with ``mask: (B, T)`` (True = real; None = all real).

        Returns ``h (B, T, D)``, equal to :meth:`forward`, and the :class:`StackState` to :meth:`step` from.
        Left-padded prompts of unequal length keep their padding positions (as the forward does).
        """
        self._check_decoding()
        x, _ = self.embed_inputs(inputs, mask)  # type: ignore[arg-type]
        states = []
        for block in self.blocks:
            x, state = block.prefill(x, mask)
            states.append(state)
        h = self.norm(x)
        return (h if mask is None else h * mask[..., None].to(h.dtype)), StackState(inputs.shape[1], states)

    def step(self, inputs: Tensor, state: StackState) -> tuple[Tensor, StackState]:
        """One new real token per sequence, ``inputs: (B, 1)`` ids at position ``state.length``.

        Returns ``h (B, 1, D)``, equal to row ``state.length`` of :meth:`forward` over the whole sequence
        (the prompt's mask extended with True), and the new state.
        """
        self._check_decoding()
        if not isinstance(state, StackState):
            raise TypeError(f"state must be the StackState returned by prefill or step, got {type(state).__name__}")
        if inputs.dim() != 2 or inputs.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, inputs: (B, 1); got {tuple(inputs.shape)}")
        x, _ = self.embed_inputs(inputs, None, start=state.length)  # type: ignore[arg-type]
        layers = []
        for block, layer in zip(self.blocks, state.layers, strict=True):
            x, layer = block.step(x, layer)
            layers.append(layer)
        return self.norm(x), StackState(state.length + 1, layers)

    def _check_decoding(self) -> None:
        if not self.cfg.causal:
            raise ValueError("token-by-token decoding needs a causal model (model.causal: true)")
        if self.cfg.pooling in CLS_POOLINGS or self.embed.patch != 1:
            raise ValueError("token-by-token decoding needs one token per input (no CLS token, model.patch_size 1)")

    @torch.no_grad()
    def attention_maps(self, inputs: Tensor, mask: Tensor) -> list[Tensor]:
        """Dense attention weights of every layer, each ``(B, H, T, T)``; for small T (materialised)."""
        x, mask = self.embed_inputs(inputs, mask)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_map(block.attention_input(x), mask))
            x = block(x, mask)
        return maps
