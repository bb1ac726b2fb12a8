"""What the engine ran: the path each call took and the score entries its kernels computed.

Benchmarks label a case with what actually ran (not with the executor that was asked for) and count the
work that was done: inside :func:`trace_engine`, every :func:`attnzoo.sparse.sparse_attention` call notes
its path (``fused-dense``: one fused call, short unpadded input; ``dense-fallback``: one masked call; ``grouped``;
``masked-gather``; the block-sparse plan on an executor: ``gather``, with ``band`` when its sliding-window fast
path ran, ``gather-autograd``, ``flex``, ``dense``) and every forward kernel call its ``(query, key)`` score
entries. Outside a trace nothing is recorded (one context-variable read per call).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["EngineTrace", "note_path", "note_scores", "trace_engine"]


@dataclass
class EngineTrace:
    """Paths taken (in call order, repeats kept) and the forward score entries computed, all batches and heads."""

    paths: list[str] = field(default_factory=list)
    score_entries: int = 0

    def label(self) -> str | None:
        """The distinct paths joined by ``+`` in first-use order (``"gather+band"``), or None when the engine
        did not run."""
        return "+".join(dict.fromkeys(self.paths)) or None


_ACTIVE: ContextVar[EngineTrace | None] = ContextVar("attnzoo_engine_trace", default=None)


@contextmanager
def trace_engine() -> Iterator[EngineTrace]:
    """Record what the engine runs inside the ``with`` block (nested traces each see only their own block)."""
    trace = EngineTrace()
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)


def note_path(name: str) -> None:
    """Record that a call took path ``name`` (no-op outside :func:`trace_engine`)."""
    trace = _ACTIVE.get()
    if trace is not None:
        trace.paths.append(name)


def note_scores(batch_rows: int, queries: int, keys: int, causal: bool) -> None:
    """Record one kernel call's score entries: ``batch_rows`` independent ``queries x keys`` matrices (B x G),
    of which a causal call computes the lower triangle aligned at the top left (row i sees min(i + 1, keys))."""
    trace = _ACTIVE.get()
    if trace is None:
        return
    if causal:
        seen = min(queries, keys)
        per_matrix = seen * (seen + 1) // 2 + max(queries - keys, 0) * keys
    else:
        per_matrix = queries * keys
    trace.score_entries += batch_rows * per_matrix
