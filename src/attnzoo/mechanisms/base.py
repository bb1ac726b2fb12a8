"""The one projection / head split / output projection shared by every attention module."""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.ops.common import check_padding_mask, zero_masked_rows, zero_padded_tokens
from attnzoo.registry import MechanismSpec, available

__all__ = ["AttentionBase", "registered_spec", "split_heads"]


def registered_spec(module_type: type) -> MechanismSpec | None:
    """The registry entry of ``module_type``, or of its nearest registered base class; ``None`` if none."""
    by_module = {spec.module: spec for spec in available()}
    return next((by_module[cls] for cls in module_type.__mro__ if cls in by_module), None)


def _capable(flag: str) -> str:
    """The names of the registered mechanisms whose capability ``flag`` is set, comma-separated."""
    return ", ".join(s.name for s in available() if getattr(s.capabilities, flag))


def _check_causal(spec: MechanismSpec, causal: bool) -> None:
    """Raise unless ``spec``'s capabilities allow this ``causal`` flag (``causal`` / ``bidirectional``)."""
    if causal and not spec.capabilities.causal:
        raise ValueError(f"attention {spec.name!r} cannot be causal; causal mechanisms: {_capable('causal')}")
    if not causal and not spec.capabilities.bidirectional:
        raise ValueError(f"attention {spec.name!r} is causal only; build it with causal=True")


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, H*d) -> (B, H, N, d)``."""
    b, n, width = x.shape
    return x.view(b, n, num_heads, width // num_heads).transpose(1, 2)


class AttentionBase(nn.Module, abc.ABC):
    """Multi-head self-attention shell: ``x (B, N, dim) -> qkv -> attend(q, k, v) -> proj -> (B, N, dim)``.

    Parameters follow efficient-attention's ``MultiheadAttention`` so its checkpoints map one to one:
    ``qkv = Linear(dim, 3*dim)`` whose output channels are ordered (3, H, d) (q first, head-major),
    ``proj = Linear(dim, dim)``; weights ``trunc_normal(std=0.02)``, biases 0. Subclasses implement
    :meth:`attend` on ``(B, H, N, d)`` tensors and may override :meth:`project` (e.g. a mechanism
    without queries and keys).

    The constructor refuses what the registered capabilities (:class:`~attnzoo.registry.Capabilities`)
    rule out, however the module is built: ``causal=True`` without ``causal``, ``causal=False`` without
    ``bidirectional``; forward refuses a padding mask with padding without ``key_padding_mask`` and a
    context without ``cross_attention``. A subclass that is not registered inherits its nearest
    registered base class's capabilities (none: no refusal). Padded tokens are zeroed before the
    projections, so their content (NaN and inf included) reaches no real row, unless
    :meth:`padding_takes_part` says an official quirk lets it in.

    Args:
        dim: model width, divisible by ``num_heads``.
        num_heads: H.
        causal: token i may use tokens j <= i only.
        dropout: attention-probability dropout during training (mechanisms without probabilities
            apply none and say so in their docstring).
        options: the mechanism's options dataclass.
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, dropout: float = 0.0, options: Any) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.spec = registered_spec(type(self))
        if self.spec is not None:
            _check_causal(self.spec, causal)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.causal, self.dropout, self.options = causal, dropout, options
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        for linear in (self.qkv, self.proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def check_mask(
        self, mask: Tensor | None, batch: int, length: int, device: torch.device, *, axis: str = "N"
    ) -> Tensor | None:
        """:func:`~attnzoo.ops.common.check_padding_mask`, then refuse a mask with padding if the
        mechanism has no ``key_padding_mask`` capability. Returns the mask, ``(B, N)`` bool or ``None``."""
        mask = check_padding_mask(mask, batch, length, device, axis=axis)
        spec = self.spec
        if mask is not None and spec is not None and not spec.capabilities.key_padding_mask and not bool(mask.all()):
            raise ValueError(
                f"attention {spec.name!r} cannot honour a padding mask with padded tokens; "
                f"mechanisms that do: {_capable('key_padding_mask')}"
            )
        return mask

    def padding_takes_part(self) -> bool:
        """Whether padded tokens' content reaches real rows by design: an official quirk reproduced under
        ``compat`` (ra's E9, lara's 2D pooling). False here; such a mechanism overrides this."""
        return False

    def clean_input(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x: (B, N, dim)`` with its padded tokens zeroed (``mask: (B, N)``), unless :meth:`padding_takes_part`."""
        return x if self.padding_takes_part() else zero_padded_tokens(x, mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}, options={self.options}"

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x: (B, N, dim) -> q, k, v: (B, H, N, d)`` (views of one fused projection)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    @abc.abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """The mechanism: ``(B, H, N, d)`` x3 and ``mask: (B, N) | None`` -> ``(B, H, N, d)``."""

    @torch.no_grad()
    def attention_map(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The attention matrix this module applies to its values: ``(B, H, N, N)``.

        Every mechanism here is linear in the values for fixed queries and keys, so feeding the
        identity as values (``v = I``, width N) returns row i's weights over the keys. Meant for
        small N (attention-map figures, tests); costs as much as one forward with ``d = N``.
        """
        mask = self.check_mask(mask, x.shape[0], x.shape[1], x.device)
        q, k, _ = self.project(self.clean_input(x, mask))
        b, h, n, _ = q.shape
        eye = torch.eye(n, dtype=q.dtype, device=q.device).expand(b, h, n, n)
        return zero_masked_rows(self.attend(q, k, eye, mask), mask)

    def merge(self, out: Tensor) -> Tensor:
        """``(B, H, N, d) -> (B, N, dim)`` followed by the output projection."""
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, self.dim))

    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Raise a clear error unless ``x`` is a floating ``(B, N, dim)`` tensor."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (B, N, dim) = (B, N, {self.dim}), got {shape}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{name} has width {x.shape[-1]} but the module was built with dim={self.dim}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention over ``x: (B, N, dim)``, or cross-attention from ``x`` to ``context``.

        Args:
            x: ``(B, N, dim)``, the queries (and, without ``context``, the keys and values).
            mask: ``(B, N)`` bool, True = real token of ``x``.
            context: ``(B, S, dim)``: keys and values come from it (cross-attention; only the
                mechanisms whose ``cross_attention`` capability is set, and not with ``causal``).
            context_mask: ``(B, S)`` bool, True = real key of ``context``.

        Returns:
            ``(B, N, dim)``; the attention output of padded query rows is zero before ``proj``.

        Raises:
            ValueError: bad shapes or masks, ``context_mask`` without ``context``, ``context`` for a
                mechanism without cross-attention or for a causal module.
        """
        if context is None:
            if context_mask is not None:
                raise ValueError("context_mask was given without context")
            self.check_input(x)
            mask = self.check_mask(mask, x.shape[0], x.shape[1], x.device)
            q, k, v = self.project(self.clean_input(x, mask))
            if x.shape[0] == 0 or x.shape[1] == 0:  # empty batch or sequence: empty output, no attention
                return self.merge(v * 0)
            return self.merge(zero_masked_rows(self.attend(q, k, v, mask), mask))
        k, v, context_mask = self.context_kv(context, context_mask)
        return self.attend_context(x, k, v, mask, context_mask)

    def check_cross_attention(self) -> None:
        """Raise unless this module may attend to a context (its ``cross_attention`` flag, not causal)."""
        name = type(self).__name__ if self.spec is None else repr(self.spec.name)
        if self.spec is None or not self.spec.capabilities.cross_attention:
            capable = _capable("cross_attention")
            raise ValueError(f"attention {name} has no cross-attention (context); mechanisms that do: {capable}")
        if self.causal:
            raise ValueError(f"attention {name} was built with causal=True; cross-attention to a context is not causal")

    def context_kv(self, context: Tensor, context_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Keys and values of a context: ``context (B, S, dim) -> k, v: (B, H, S, d)`` and the checked mask.

        Uses the k and v rows of the fused ``qkv`` projection, so self- and cross-attention modules
        share one parameter layout. A decoder computes this once per source and reuses it every step.
        """
        self.check_cross_attention()
        self.check_input(context, "context")
        context_mask = self.check_mask(context_mask, context.shape[0], context.shape[1], context.device, axis="S")
        context = self.clean_input(context, context_mask)
        k, v = F.linear(context, self.qkv.weight[self.dim :], self.qkv.bias[self.dim :]).chunk(2, dim=-1)
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads), context_mask

    def attend_context(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """Cross-attention from ``x: (B, N, dim)`` to keys/values ``k, v: (B, H, S, d)`` of :meth:`context_kv`.

        ``mask: (B, N)`` marks the real queries, ``context_mask: (B, S)`` the real keys. Returns
        ``(B, N, dim)``; query rows that are padding or see no real key give zero before ``proj``.
        """
        self.check_cross_attention()
        self.check_input(x)
        if k.shape[0] != x.shape[0]:
            raise ValueError(f"context has batch {k.shape[0]} but x has batch {x.shape[0]}")
        mask = self.check_mask(mask, x.shape[0], x.shape[1], x.device)
        context_mask = self.check_mask(context_mask, k.shape[0], k.shape[2], k.device, axis="S")
        x = self.clean_input(x, mask)
        q = split_heads(F.linear(x, self.qkv.weight[: self.dim], self.qkv.bias[: self.dim]), self.num_heads)
        if 0 in (x.shape[0], x.shape[1], k.shape[2]):  # empty batch, queries or context: nothing to attend to
            return self.merge(q * 0)
        return self.merge(zero_masked_rows(self.attend_cross(q, k, v, mask, context_mask), mask))

    def attend_cross(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, context_mask: Tensor | None) -> Tensor:
        """Cross-attention core: ``q (B, H, N, d)``, ``k, v (B, H, S, d)``, ``mask (B, N)`` of the queries and
        ``context_mask (B, S)`` of the keys -> ``(B, H, N, d)``. By default :meth:`attend` with the key
        mask (rows are independent of each other); a mechanism whose rows depend on which queries are
        real (Nystrom's query landmarks) overrides this."""
        return self.attend(q, k, v, context_mask)

    def prefill(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, DecodeState]:
        """Run a causal module over a prompt and return its output and the state to decode from.

        Args:
            x: prompt ``(B, T, dim)``.
            mask: ``(B, T)`` bool, True = real token (e.g. left padding of prompts of unequal length).

        Returns:
            ``y (B, T, dim)``, equal to ``forward(x, mask)``, and the mechanism's
            :class:`~attnzoo.mechanisms.decoding.DecodeState` after the prompt.
        """
        self.check_decoding()
        self.check_input(x)
        mask = self.check_mask(mask, x.shape[0], x.shape[1], x.device)
        q, k, v = self.project(self.clean_input(x, mask))
        empty = x.shape[0] == 0 or x.shape[1] == 0
        out = v * 0 if empty else zero_masked_rows(self.attend(q, k, v, mask), mask)
        return self.merge(out), self.init_state(q, k, v, mask)

    def step(self, x: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """Decode one real token ``x: (B, 1, dim)`` after ``state``; returns ``(B, 1, dim)`` and the new state.

        Costs O(state), not O(tokens so far), for the mechanisms whose state is bounded.
        """
        self.check_decoding()
        self.check_input(x)
        if x.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, x: (B, 1, {self.dim}); got {tuple(x.shape)}")
        if not isinstance(state, DecodeState):
            raise TypeError(f"state must be the DecodeState returned by prefill or step, got {type(state).__name__}")
        if state.batch_size != x.shape[0]:
            raise ValueError(f"state holds {state.batch_size} sequences but x has batch {x.shape[0]}")
        q, k, v = self.project(x)
        out, state = self.decode(q, k, v, state)
        return self.merge(out), state

    def check_decoding(self) -> None:
        """Raise unless this module can decode (it was built with ``causal=True``)."""
        if not self.causal:
            raise ValueError(f"{type(self).__name__} decodes only when built with causal=True")

    def init_state(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> DecodeState:
        """The decoding state after a prompt with ``q, k, v: (B, H, T, d)`` and ``mask: (B, T) | None``.

        Every mechanism registered with ``causal=True`` overrides this and :meth:`decode`.
        """
        raise TypeError(f"{type(self).__name__} has no token-by-token decoding")

    def decode(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """One step: ``q, k, v: (B, H, 1, d)`` of a real token -> output ``(B, H, 1, d)`` and the new state."""
        raise TypeError(f"{type(self).__name__} has no token-by-token decoding")

    def attention_dropout(self) -> float:
        """The dropout probability to apply now (0 in eval mode)."""
        return self.dropout if self.training else 0.0
