"""Public implementations run side by side with attnzoo (``attnzoo bench --peers``).

Each :class:`Peer` pairs a public attention core with the attnzoo mechanism that computes the same
thing, builds it at matched settings (read from the attnzoo mechanism's benchmark options) and
calls it on the very ``q, k, v`` attnzoo gets, in ``(B, H, N, d)``; projections are bypassed (the
packages that only expose a module with projections get the prepared q/k/v through stand-in
layers, and identity output projections), so only the attention core is timed. A package that is
not installed gives a ``missing`` record, never an error. Install them apart from the main
environment (``docs/benchmarks.md``, "Public peers").
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PEERS", "Peer", "build_peer"]

Core = Callable[[Tensor, Tensor, Tensor], Tensor]


def _opt(opts: Any, names: tuple[str, ...], default: Any) -> Any:
    """The first of ``names`` that the attnzoo options have (option names differ between mechanisms)."""
    for name in names:
        if hasattr(opts, name):
            return getattr(opts, name)
    return default


class _Given(nn.Module):
    """Stands in for a projection layer: returns a prepared tensor, whatever its input."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return self.value


def _tokens(*ts: Tensor) -> Tensor:
    """``(B, H, N, d)`` tensors -> one ``(B, N, H*d)`` tensor, concatenated on the last axis."""
    return torch.cat([t.transpose(1, 2).flatten(2) for t in ts], dim=-1)


def _heads(x: Tensor, h: int) -> Tensor:
    """``(B, N, H*d)`` -> ``(B, H, N, d)``."""
    b, n, _ = x.shape
    return x.reshape(b, n, h, -1).transpose(1, 2)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)), {}


def _flex_sliding(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    w = opts.window_size

    def window(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        near = (qi - ki <= w) & (ki - qi <= w)
        return near & (ki <= qi) if causal else near

    n = q.shape[-2]
    block_mask = create_block_mask(window, None, None, n, n, device=str(q.device))
    flex = torch.compile(flex_attention, dynamic=False)

    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.device.type == "cpu":  # FlexAttention has no CPU backward and refuses inputs that require grad
            if torch.is_grad_enabled():
                raise NotImplementedError("FlexAttention has no backward on CPU")
            q, k, v = q.detach(), k.detach(), v.detach()
        return flex(q, k, v, block_mask=block_mask)

    return core, {"window": w, "BLOCK_SIZE": 128}


def _local_attention(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from local_attention import LocalAttention

    w = opts.window_size
    kwargs = {"window_size": w, "causal": causal, "look_backward": 1, "look_forward": 0 if causal else 1}
    peer = LocalAttention(**kwargs, exact_windowsize=True, autopad=True).to(q.device)
    return (lambda q, k, v: peer(q, k, v)), kwargs


def _performer(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from performer_pytorch import FastAttention

    features = _opt(opts, ("approx_attn_dim", "nb_features", "num_features"), 256)
    peer = FastAttention(dim_heads=q.shape[-1], nb_features=features, causal=causal).to(q.device, q.dtype)
    return (lambda q, k, v: peer(q, k, v)), {"nb_features": features}


def _nystrom(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from nystrom_attention import NystromAttention

    b, h, n, d = q.shape
    landmarks = _opt(opts, ("num_landmarks",), 256)
    kwargs = {"num_landmarks": landmarks, "pinv_iterations": _opt(opts, ("pinv_iterations",), 6)}
    peer = NystromAttention(dim=h * d, dim_head=d, heads=h, residual=False, **kwargs).to(q.device, q.dtype)
    peer.to_out = nn.Identity()

    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        peer.to_qkv = _Given(_tokens(q, k, v))
        return _heads(peer(q.new_empty(b, n, h * d)), h)

    return core, kwargs


def _linformer(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from linformer import LinformerSelfAttention

    b, h, n, d = q.shape
    proj = _opt(opts, ("proj_dim", "linformer_k", "k"), 256)
    share_kv = _opt(opts, ("sharing",), "kv") in ("kv", "headwise-kv")
    peer = LinformerSelfAttention(dim=h * d, seq_len=n, k=proj, heads=h, share_kv=share_kv).to(q.device, q.dtype)
    peer.to_out = nn.Identity()

    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        peer.to_q, peer.to_k, peer.to_v = _Given(_tokens(q)), _Given(_tokens(k)), _Given(_tokens(v))
        return _heads(peer(q.new_empty(b, n, h * d)), h)

    return core, {"k": proj, "share_kv": share_kv}


def _reformer(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    from reformer_pytorch.reformer_pytorch import LSHAttention

    b, h, n, d = q.shape
    kwargs = {
        "bucket_size": _opt(opts, ("bucket_size",), 64),
        "n_hashes": _opt(opts, ("n_hashes", "num_hashes", "num_hash"), 8),
    }
    peer = LSHAttention(causal=causal, **kwargs).to(q.device)

    def core(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = peer(q.reshape(b * h, n, d), v.reshape(b * h, n, d))[0]
        return out.reshape(b, h, n, d)

    return core, kwargs


def _xformers_shim() -> None:
    """Give dilated-attention-pytorch an ``xformers.ops`` made of SDPA when xformers is not installed
    (same math on ``(B, S, H, d)``; the kernel attnzoo's ``dilated`` runs on CPU too). Idempotent: the
    stand-in modules carry specs, so a later ``find_spec("xformers")`` (a second case in the same worker)
    finds them instead of raising."""
    if "xformers" in sys.modules or importlib.util.find_spec("xformers") is not None:
        return
    ops = types.ModuleType("xformers.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)

    def memory_efficient_attention(query: Tensor, key: Tensor, value: Tensor, op: Any = None, attn_bias: Any = None):
        out = F.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (query, key, value)), is_causal=bool(attn_bias)
        )
        return out.transpose(1, 2)

    ops.AttentionOp = Any  # type: ignore[attr-defined]
    ops.LowerTriangularMask = lambda: True  # type: ignore[attr-defined]
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    package = types.ModuleType("xformers")
    package.__spec__ = importlib.machinery.ModuleSpec("xformers", None, is_package=True)
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules.setdefault("xformers", package)
    sys.modules.setdefault("xformers.ops", ops)


def _dilated(q: Tensor, k: Tensor, v: Tensor, opts: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    if importlib.util.find_spec("dilated_attention_pytorch") is None:
        raise ModuleNotFoundError("No module named 'dilated_attention_pytorch'")
    _xformers_shim()
    from dilated_attention_pytorch.dilated_attention import DilatedAttention

    n = q.shape[-2]
    segments = [min(s, n) for s in opts.segment_lengths]  # it needs N divisible by every segment
    kwargs = {"segment_lengths": segments, "dilation_rates": list(opts.dilation_rates)}
    peer = DilatedAttention(**kwargs)
    return (lambda q, k, v: peer(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal).transpose(1, 2)), kwargs


@dataclass(frozen=True)
class Peer:
    """A public implementation paired with an attnzoo mechanism.

    Attributes:
        name: how the tables call it.
        package: the import name whose absence makes the peer ``missing``.
        mechanism: the attnzoo mechanism it is compared with (run with its benchmark options).
        make: ``make(q, k, v, attnzoo_options, causal) -> (core, peer_settings)``.
        same_output: the two compute the same function (the record then holds their output difference).
        differs: what differs in the algorithm, in a line.
    """

    name: str
    package: str
    mechanism: str
    make: Callable[[Tensor, Tensor, Tensor, Any, bool], tuple[Core, dict[str, Any]]]
    same_output: bool
    differs: str


PEERS: tuple[Peer, ...] = (
    Peer("sdpa", "torch", "softmax", _sdpa, True, "the same call: attnzoo's softmax is SDPA (overhead check)"),
    Peer(
        "flex-sliding",
        "torch",
        "local",
        _flex_sliding,
        True,
        "FlexAttention with a sliding-window mask_mod on 128-token blocks, compiled; no CPU backward",
    ),
    Peer(
        "local-attention",
        "local_attention",
        "local",
        _local_attention,
        True,
        "materialises the scores of each window-sized query block against 3 key blocks at once "
        "(B*H*N*3w floats), then masks to the exact window; attnzoo runs blocks through a fused kernel in chunks",
    ),
    Peer(
        "performer-pytorch",
        "performer_pytorch",
        "performer",
        _performer,
        False,
        "FAVOR+ positive features with its own orthogonal random draw; outputs differ by the draw",
    ),
    Peer(
        "nystrom-attention",
        "nystrom_attention",
        "nystrom",
        _nystrom,
        False,
        "pads N at the front to a multiple of the landmarks; its conv residual is turned off here",
    ),
    Peer(
        "linformer",
        "linformer",
        "linformer",
        _linformer,
        False,
        "share_kv=True: one E for keys, values and all heads, as attnzoo's sharing='headwise-kv' (the benchmark's "
        "setting; the default 'kv' keeps one E per head, same FLOPs); its own random parameters, so outputs differ",
    ),
    Peer(
        "reformer-pytorch",
        "reformer_pytorch",
        "reformer",
        _reformer,
        False,
        "shared-QK LSH with its own random rotations; q is used as the shared qk",
    ),
    Peer(
        "dilated-attention-pytorch",
        "dilated_attention_pytorch",
        "dilated",
        _dilated,
        False,
        "gives each (segment, dilation) branch only a share of the heads and mixes by output sums, not "
        "softmax denominators (LongNet gives every head every branch); xformers replaced by SDPA if absent",
    ),
)
"""Every peer; ``--peers`` runs the ones whose attnzoo mechanism is registered."""


def build_peer(peer: Peer, q: Tensor, k: Tensor, v: Tensor, options: Any, causal: bool) -> tuple[Core, dict[str, Any]]:
    """The peer's core at settings matched to attnzoo ``options`` (an options dataclass instance).

    Raises:
        ModuleNotFoundError: the package (or one it needs) is not installed.
    """
    if importlib.util.find_spec(peer.package) is None:
        raise ModuleNotFoundError(f"No module named {peer.package!r}")
    return peer.make(q, k, v, options, causal)
