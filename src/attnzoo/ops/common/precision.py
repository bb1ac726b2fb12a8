"""The dtype rule of the functional cores (``docs/precision.md``).

* Softmax cores (SDPA, the sparse engine, the sampled and pooled softmaxes of lara, ra, linformer) compute in
  the input dtype and return it; their kernels keep the softmax statistics (max, log-sum-exp) in fp32.
  Under autocast a module's q, k, v already have the autocast dtype (they leave autocast projections).
* Cores whose math estimates or chains reductions (random features, a pseudo-inverse, diffusion or
  factor products, running normalisers) compute in ``promote(dtype, fp32)`` with autocast switched
  off inside, and return the dtype a matmul of their inputs would have (:func:`result_dtype`):
  :func:`fp32_core` wraps them, so their hand-written backwards see one dtype too (call ``backward()``
  outside autocast, as PyTorch recommends).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["autocast_off", "fp32_core", "result_dtype", "working_dtype"]

Core = TypeVar("Core", bound=Callable[..., Tensor])


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def result_dtype(x: Tensor) -> torch.dtype:
    """The dtype of a core's output for inputs like ``x``: the autocast dtype when autocast is enabled on
    ``x``'s device and ``x`` is a floating tensor other than fp64 (what autocast gives a matmul), else
    ``x.dtype``."""
    if x.is_floating_point() and x.dtype != torch.float64 and _autocast_on(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def working_dtype(x: Tensor) -> torch.dtype:
    """The dtype an fp32 core computes in for inputs like ``x``: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """A context with autocast disabled on ``x``'s device (a no-op where autocast does not exist)."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def fp32_core(core: Core) -> Core:
    """Run functional core ``core(q, k, v, ...)`` in :func:`working_dtype` with autocast off; return its
    output in :func:`result_dtype` of ``q``.

    q, k, v (the first three parameters, positional or by name) are cast when they are floating tensors
    of one dtype; otherwise they pass through unchanged, so the core's own checks name the problem.
    Every other argument passes through unchanged (the core casts its own float options, e.g. a
    projection, to q's dtype).
    """
    names = tuple(inspect.signature(core).parameters)[:3]

    @functools.wraps(core)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        qkv = [*args[:3], *(kwargs[name] for name in names[len(args[:3]) :] if name in kwargs)]
        if len(qkv) < 3 or not all(isinstance(t, Tensor) and t.is_floating_point() for t in qkv):
            return core(*args, **kwargs)
        q = qkv[0]
        if len({t.dtype for t in qkv}) > 1:
            return core(*args, **kwargs)
        out_dtype, work = result_dtype(q), working_dtype(q)
        args = tuple(t.to(work) if i < 3 else t for i, t in enumerate(args))
        kwargs = {key: (t.to(work) if key in names else t) for key, t in kwargs.items()}
        with autocast_off(q):
            out = core(*args, **kwargs)
        return out.to(out_dtype)

    return wrapper  # type: ignore[return-value]
