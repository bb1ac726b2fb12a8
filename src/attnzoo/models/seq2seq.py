"""Encoder-decoder (the seeds' translation setting): any mechanism per side, teacher forcing, greedy decoding.

The encoder is the shared :class:`~attnzoo.models.transformer.Encoder` (``model.attention``, self-attention
over the source). Each decoder layer has causal self-attention (``model.decoder_attention``, any causal
mechanism), cross-attention to the encoder output (``model.cross_attention``, any mechanism whose
``cross_attention`` capability is set) and the MLP, with the encoder's residual wiring (``model.norm``).

A batch (``tasks.collate`` of a ``target="seq2seq"`` task) holds the source ``input_ids``/``mask``,
the decoder input ``input_ids2``/``mask2`` (BOS, then the target) and ``label`` (the target, then EOS;
-100 = not scored). Shape legend: B batch, S source tokens, L target tokens, D width, C vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnzoo
from attnzoo.mechanisms.base import AttentionBase
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.models.heads import TaskModel
from attnzoo.models.positions import make_positions
from attnzoo.models.transformer import CLS_POOLINGS, MLP, ModelConfig

__all__ = ["BOS_ID", "EOS_ID", "DecoderBlock", "Seq2Seq", "check_seq2seq_config"]

BOS_ID, EOS_ID = 1, 2  # target vocabulary: 0 = padding, 1 = begin, 2 = end, then the task's symbols

ContextKV = tuple[Tensor, Tensor, Tensor | None]  # cached cross-attention keys, values and context mask


def check_seq2seq_config(cfg: ModelConfig) -> None:
    """Raise ``ValueError`` naming the field unless the decoder's mechanisms and sizes are usable."""
    cfg.validate()
    specs = {spec.name: spec for spec in attnzoo.available()}
    for field, need in (("decoder_attention", "causal"), ("cross_attention", "cross_attention")):
        name = getattr(cfg, field)
        if name not in specs:
            raise ValueError(f"model.{field}: unknown mechanism {name!r}; available: {', '.join(sorted(specs))}")
        if not getattr(specs[name].capabilities, need):
            capable = ", ".join(s for s in sorted(specs) if getattr(specs[s].capabilities, need))
            what = "causal" if need == "causal" else "cross-attention"
            raise ValueError(f"model.{field}: {name!r} has no {what} mode; mechanisms that do: {capable}")
    if isinstance(cfg.decoder_layers, bool) or not isinstance(cfg.decoder_layers, int) or cfg.decoder_layers < 0:
        raise ValueError(f"model.decoder_layers must be an int >= 0 (0 = num_layers), got {cfg.decoder_layers!r}")
    if cfg.pooling in CLS_POOLINGS or cfg.patch_size != 1:
        raise ValueError("an encoder-decoder needs model.pooling != 'cls' (nor 'cls-id') and model.patch_size == 1")


def can_decode(module: nn.Module) -> bool:
    """Whether ``module`` implements token-by-token decoding (its own ``init_state``/``decode`` hooks)."""
    return isinstance(module, AttentionBase) and type(module).init_state is not AttentionBase.init_state


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, MLP: ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in range(3))
        drop = cfg.attention_dropout
        self.self_attn = attnzoo.build(
            cfg.decoder_attention, cfg.dim, cfg.num_heads, causal=True, dropout=drop, **cfg.decoder_attention_options
        )
        self.cross_attn = attnzoo.build(
            cfg.cross_attention, cfg.dim, cfg.num_heads, dropout=drop, **cfg.cross_attention_options
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim, cfg.dropout)

    def _sublayer(self, x: Tensor, index: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Residual wiring: ``x + Drop(fn(LN x))`` (pre-LN) or ``LN(x + Drop(fn(x)))`` (post-LN)."""
        norm = self.norms[index]
        return x + self.drop(fn(norm(x))) if self.pre_norm else norm(x + self.drop(fn(x)))

    def _finish(self, x: Tensor, mask: Tensor | None, kv: ContextKV) -> Tensor:
        """Cross-attention to the cached ``kv`` and the MLP (the MLP carries its own dropout)."""
        x = self._sublayer(x, 1, lambda h: self.cross_attn.attend_context(h, kv[0], kv[1], mask, kv[2]))
        if self.pre_norm:
            return x + self.mlp(self.norms[2](x))
        return self.norms[2](x + self.mlp(x))

    def forward(self, x: Tensor, mask: Tensor | None, kv: ContextKV) -> Tensor:
        """Teacher forcing over ``x: (B, L, D)`` with ``mask: (B, L)`` and the encoder's cached ``kv``."""
        return self._finish(self._sublayer(x, 0, lambda h: self.self_attn(h, mask)), mask, kv)

    def prefill(self, x: Tensor, kv: ContextKV) -> tuple[Tensor, DecodeState]:
        """:meth:`forward` over a prefix ``x: (B, T, D)`` (all real), plus the self-attention's decoding state."""
        return self._with_state(x, kv, self.self_attn.prefill)

    def step(self, x: Tensor, state: DecodeState, kv: ContextKV) -> tuple[Tensor, DecodeState]:
        """:meth:`forward` of one new token ``x: (B, 1, D)`` after ``state``; returns ``(B, 1, D)`` and the state."""
        return self._with_state(x, kv, lambda h: self.self_attn.step(h, state))

    def _with_state(
        self, x: Tensor, kv: ContextKV, attend: Callable[[Tensor], tuple[Tensor, DecodeState]]
    ) -> tuple[Tensor, DecodeState]:
        """The layer with self-attention ``attend(h) -> (out, state)``; returns the output and that state."""
        states: list[DecodeState] = []

        def attend_only(h: Tensor) -> Tensor:
            out, state = attend(h)
            states.append(state)
            return out

        return self._finish(self._sublayer(x, 0, attend_only), None, kv), states[0]


class Seq2Seq(TaskModel):
    """Encoder-decoder for ``target="seq2seq"`` tasks: ``forward(batch) -> logits (B, L, C)`` (teacher forcing).

    ``loss`` (inherited) is the cross-entropy over the scored target tokens, with the teacher-forced
    per-token accuracy; :meth:`generation_metrics` scores greedy decoding.

    :meth:`generate` decodes greedily from BOS, reusing the decoder self-attention's decoding state when
    every layer's mechanism has one (else recomputing the prefix each step; both give the same tokens)
    and computing each layer's cross-attention keys and values once per source.
    """

    def __init__(self, task: Any, cfg: ModelConfig) -> None:
        check_seq2seq_config(cfg)
        super().__init__(task, cfg)
        self.embed = nn.Embedding(task.num_classes, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions = make_positions(cfg.positions, task.seq_len, cfg.dim, None)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers or cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim) if cfg.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.dim, task.num_classes)

    def encode(self, source: Tensor, mask: Tensor) -> list[ContextKV]:
        """Encode ``source: (B, S)`` with ``mask: (B, S)``; returns every decoder layer's cached keys and values."""
        memory, mask = self.encoder(source, mask)
        return [block.cross_attn.context_kv(memory, mask) for block in self.blocks]

    def _embed(self, ids: Tensor, start: int = 0) -> Tensor:
        return self.drop(self.positions(self.embed(ids), start))

    def decode(self, ids: Tensor, mask: Tensor | None, kvs: list[ContextKV]) -> Tensor:
        """Teacher-forced logits ``(B, L, C)`` of decoder input ``ids: (B, L)`` (``mask: (B, L)``) given ``kvs``."""
        x = self._embed(ids)
        for block, kv in zip(self.blocks, kvs, strict=True):
            x = block(x, mask, kv)
        return self.lm_head(self.norm(x))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        kvs = self.encode(batch["input_ids"], batch["mask"])
        return self.decode(batch["input_ids2"], batch["mask2"], kvs)

    @torch.no_grad()
    def generate(self, source: Tensor, mask: Tensor, max_len: int | None = None, *, cache: bool = True) -> Tensor:
        """Greedy decoding: target tokens ``(B, max_len)`` (default ``task.seq_len``) for ``source: (B, S)``.

        Each sequence stops at its first EOS (kept); the positions after it are padding (0).
        ``cache=False`` recomputes the decoder over the whole prefix at each step (the check on the cache).
        """
        max_len = self.task.seq_len if max_len is None else max_len
        kvs = self.encode(source, mask)
        ids = torch.full((source.shape[0], 1), BOS_ID, dtype=torch.long, device=source.device)
        incremental = cache and all(can_decode(block.self_attn) for block in self.blocks)
        states: list[DecodeState] = []
        if incremental:
            x = self._embed(ids)
            for block, kv in zip(self.blocks, kvs, strict=True):
                x, state = block.prefill(x, kv)
                states.append(state)
        done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
        out = []
        for t in range(max_len):
            if not incremental:
                x = self._embed(ids)
                for block, kv in zip(self.blocks, kvs, strict=True):
                    x = block(x, None, kv)
            elif t:
                x = self._embed(ids[:, -1:], start=t)
                for i, (block, kv) in enumerate(zip(self.blocks, kvs, strict=True)):
                    x, states[i] = block.step(x, states[i], kv)
            token = self.lm_head(self.norm(x[:, -1])).argmax(-1).masked_fill(done, 0)
            out.append(token)
            done = done | (token == EOS_ID)
            if bool(done.all()) or t + 1 == max_len:
                break
            ids = torch.cat([ids, token[:, None]], 1)
        return torch.stack(out, 1)

    @torch.no_grad()
    def generation_metrics(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Greedy decoding scored against ``label``: exact sequences and tokens correct, with their counts.

        A sequence is exact when every scored label token (the target and its EOS) is predicted at its
        position; tokens count each scored position separately.
        """
        labels = batch["label"]
        pred = self.generate(batch["input_ids"], batch["mask"], labels.shape[1])
        pred = F.pad(pred, (0, labels.shape[1] - pred.shape[1]))
        scored = labels != -100
        hits = (pred == labels) & scored
        exact = (hits | ~scored).all(-1) & scored.any(-1)
        return {
            "exact_match": exact.sum(),
            "sequences": scored.any(-1).sum(),
            "token_accuracy": hits.sum(),
            "tokens": scored.sum(),
        }
