"""Markdown tables and scaling exponents from benchmark records."""

from __future__ import annotations

import itertools
import math
from typing import Any

__all__ = ["format_table", "scaling_exponents"]


def scaling_exponents(records: list[dict[str, Any]], key: str) -> dict[tuple[str, int], float]:
    """Log-log slope of ``key`` between consecutive lengths of each mechanism: ``{(mechanism, N): slope}``.

    The slope at N compares N with the previous measured length (1 = linear, 2 = quadratic).
    """
    slopes: dict[tuple[str, int], float] = {}
    by_mech: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_mech.setdefault(rec["mechanism"], []).append(rec)
    for mech, recs in by_mech.items():
        recs = sorted(recs, key=lambda r: r["seq_len"])
        for prev, cur in itertools.pairwise(recs):
            a, b = prev.get(key), cur.get(key)
            if a and b and a > 0 and b > 0:
                slopes[(mech, cur["seq_len"])] = math.log(b / a) / math.log(cur["seq_len"] / prev["seq_len"])
    return slopes


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def format_table(records: list[dict[str, Any]], baseline: str = "softmax") -> str:
    """Markdown table: per mechanism and N, fwd / fwd+bwd ms, ratio to ``baseline``, peak MiB, exponents."""
    base = {r["seq_len"]: r for r in records if r["mechanism"] == baseline}
    mem_slope = scaling_exponents(records, "fwdbwd_mem_mib")
    time_slope = scaling_exponents(records, "fwdbwd_ms")
    lines = [
        f"| mechanism | N | fwd ms | fwd+bwd ms | fwd+bwd / {baseline} | fwd MiB | fwd+bwd MiB "
        "| time exp. | mem exp. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in sorted(records, key=lambda r: (r["mechanism"], r["seq_len"])):
        ref = base.get(rec["seq_len"])
        ratio = None
        if ref and ref.get("fwdbwd_ms") and rec.get("fwdbwd_ms"):
            ratio = rec["fwdbwd_ms"] / ref["fwdbwd_ms"]
        key = (rec["mechanism"], rec["seq_len"])
        lines.append(
            f"| {rec['mechanism']} | {rec['seq_len']} | {_fmt(rec.get('fwd_ms'))} | {_fmt(rec.get('fwdbwd_ms'))} | "
            f"{_fmt(ratio, 3)} | {_fmt(rec.get('fwd_mem_mib'))} | {_fmt(rec.get('fwdbwd_mem_mib'))} | "
            f"{_fmt(time_slope.get(key), 2)} | {_fmt(mem_slope.get(key), 2)} |"
        )
    return "\n".join(lines)
