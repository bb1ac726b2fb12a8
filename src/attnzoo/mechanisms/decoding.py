"""Token-by-token decoding state: the one API every causal mechanism implements.

A causal module returned by ``attnzoo.build(name, ..., causal=True)`` decodes with::

    y, state = module.prefill(x, mask=None)   # prompt x: (B, T, dim) -> y: (B, T, dim)
    y_t, state = module.step(x_t, state)      # x_t: (B, 1, dim)      -> y_t: (B, 1, dim)

and prefill + steps equal one causal ``forward`` over the whole sequence (the prompt's padding
mask extended with True for every decoded token). Each mechanism keeps what its next query can
see and nothing more: a KV cache (softmax), a rolling window (local), per-branch segment caches
(dilated), running feature sums (Performer, linear), chunk summaries (causal EVA).

A state is a dataclass of tensors whose first dimension is the batch; :meth:`DecodeState.select`
picks or reorders batch rows (beam search) and :meth:`DecodeState.memory_bytes` reports its size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DecodeState"]


@dataclass
class DecodeState:
    """Base of every mechanism's decoding state.

    Attributes:
        length: tokens consumed so far (prompt, padding included, plus decoded tokens); the next
            token's position.

    Subclasses add tensor fields whose dimension 0 is the batch (``None`` allowed for an empty
    cache) and plain Python fields (ints, tuples) that are the same for every row.
    """

    length: int

    def tensors(self) -> dict[str, Tensor]:
        """The batch-major tensor fields, by name."""
        return {
            field.name: value
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), Tensor)
        }

    def select(self, index: Tensor) -> DecodeState:
        """A new state keeping batch rows ``index`` (``(B',)`` long, repeats allowed), in that order.

        Beam search calls this to reorder hypotheses; the original state is left unchanged.
        """
        if not isinstance(index, Tensor) or index.dim() != 1 or index.dtype != torch.long:
            raise ValueError(f"index must be a 1-D long tensor of batch rows, got {index!r}")
        picked = {name: value.index_select(0, index.to(value.device)) for name, value in self.tensors().items()}
        return dataclasses.replace(self, **picked)

    def memory_bytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(value.numel() * value.element_size() for value in self.tensors().values())

    @property
    def batch_size(self) -> int:
        """B, the number of sequences decoded side by side."""
        for value in self.tensors().values():
            return value.shape[0]
        raise ValueError(f"{type(self).__name__} holds no tensors, so it has no batch size")
