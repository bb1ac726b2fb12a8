"""Butterfly attention through the sparse engine (the fast path)."""

from __future__ import annotations

from torch import Tensor

from attnzoo.ops.common import check_qkv
from attnzoo.options import check_int
from attnzoo.sparse import sparse_attention
from attnzoo.sparse.structured import butterfly_groups

__all__ = ["butterfly_attention"]


def butterfly_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    block_size: int = 64,
    stage: int = 0,
    float_stage_count: bool = False,
    max_seq_len: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    executor: str = "auto",
) -> Tensor:
    """Butterfly attention (Sapkota & Bhattarai, Dimension Mixer; Solving-LRA-PathX ``ButterflyTransformer``).

    Tokens are grouped b = ``block_size`` at a time with stride s (stage ``stage`` of the butterfly,
    see :func:`attnzoo.sparse.structured.butterfly_geometry`): query i attends key j iff
    ``i // (b s) == j // (b s)`` and ``i = j (mod s)``; exact softmax inside each group. Any N (the
    official code asserts ``N % b == 0``; here the sequence is padded with masked slots). Time
    O(N b d), memory O(N d).

    Args:
        q, k, v: ``(B, H, N, d)``.
        mask: bool padding mask ``(B, N)``, True = real token.
        causal: keys j <= i only (inside the group).
        block_size: b (the butterfly radix), >= 2.
        stage: the layer index; the stride is ``b ** (stage mod n_stage)`` with the official cap.
        float_stage_count: official float ``ceil(log N / log b)`` (quirk B1).
        max_seq_len: the official fixed length: the stride is taken for ``max_seq_len`` tokens whatever
            N (<= max_seq_len), as if every input were right-padded to it, so a prefix's groups are the
            full sequence's (what causal decoding needs). None: the stride of each input's own N.
        scale, dropout_p, executor: see :func:`attnzoo.sparse.sparse_attention`.

    Returns:
        ``(B, H, N, d)``; rows that see no key are 0.

    Raises:
        ValueError: ``block_size < 2``, a negative ``stage``, ``N > max_seq_len``.

    Reference: :func:`attnzoo.ops.butterfly.naive_butterfly_attention`.
    """
    check_qkv(q, k, v, cross=False)
    check_int("block_size", block_size, minimum=2)
    check_int("stage", stage, minimum=0)
    if max_seq_len is not None:
        check_int("max_seq_len", max_seq_len, minimum=1)
        if q.shape[-2] > max_seq_len:
            raise ValueError(f"butterfly with max_seq_len={max_seq_len} got N={q.shape[-2]} tokens")
    pattern = butterfly_groups(q.shape[-2], block_size, stage, float_stage_count, max_seq_len)
    out, _ = sparse_attention(
        q, k, v, pattern, mask=mask, causal=causal, scale=scale, dropout_p=dropout_p, executor=executor, need_lse=False
    )
    return out
