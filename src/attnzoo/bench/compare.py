"""``attnzoo bench --compare OLD.jsonl``: the change of every case against an earlier run, and a verdict.

A case is the same case in both runs when its identity (:func:`case_id`) matches. A time is a
regression when ``new / old > 1 + max(tolerance, 3 * noise)``, ``noise`` being the larger relative
inter-quartile range (IQR / median) of the two measurements: a case whose repeats scatter is given
room in proportion, a steady one is held to ``tolerance``. The default tolerance, 10 %, is chosen for a
quiet machine and not yet validated on one (the VM was loaded throughout this suite's development).
A loaded machine needs far more (``--threshold``): with load average 15-20 on the 2-core VM,
back-to-back runs of one commit differed by up to +127 % (docs/benchmarks.md). Memory is a regression past
``1.1 x old + 1 MiB`` (the polled measurement is steady to about 1 MiB); an approximation error past
``1.1 x old + 1e-6``; a case that ran before and no longer does (any status but ``ok``) always is.
Cases found in one run only are listed, not judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["case_id", "compare_records", "load_records"]

_ID_FIELDS = (
    "kind",
    "mechanism",
    "peer",
    "dist",
    "pass",
    "seq_len",
    "batch",
    "heads",
    "head_dim",
    "dtype",
    "causal",
    "device",
    "compile",
)


def case_id(rec: dict[str, Any]) -> str:
    """A record's identity across runs: its case fields and options (not its measurements)."""
    return json.dumps({**{k: rec.get(k) for k in _ID_FIELDS}, "options": rec.get("options")}, sort_keys=True)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a JSON-lines file (one record per line) or a JSON list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON lines / a JSON list of records.
    """
    text = Path(path).read_text(encoding="utf-8").strip()
    if text.startswith("["):
        records = json.loads(text)
    else:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON lines of benchmark records ({err})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected benchmark records (JSON objects)")
    return records


def _label(rec: dict[str, Any]) -> str:
    what = rec.get("peer") or rec.get("mechanism") or rec.get("kind")
    detail = rec.get("pass") or rec.get("dist") or ""
    extra = f" {rec.get('dtype', '')}{' causal' if rec.get('causal') else ''}".rstrip()
    return f"{rec.get('kind')} {what} N={rec.get('seq_len', '-')} {detail}{extra}"


def _metrics(rec: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """``(name, value, relative noise)`` of the numbers a record is judged on."""
    if rec.get("kind") == "time":
        noise = rec["iqr_ms"] / rec["ms"] if rec.get("ms") and rec.get("iqr_ms") is not None else None
        return [("ms", rec.get("ms"), noise), ("mem_mib", rec.get("mem_mib"), None)]
    if rec.get("kind") == "peer":
        return [("attnzoo_ms", rec.get("attnzoo_ms"), None), ("ratio", rec.get("ratio"), None)]
    if rec.get("kind") == "error":
        return [("err_softmax", rec.get("err_softmax"), None)]
    return []


def _regressed(name: str, old: float, new: float, noise: float, tolerance: float) -> bool:
    if name == "mem_mib":
        return new > 1.1 * old + 1.0
    if name == "err_softmax":
        return new > 1.1 * old + 1e-6
    return new > old * (1.0 + max(tolerance, 3.0 * noise))


def compare_records(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *, tolerance: float = 0.10
) -> tuple[list[str], int]:
    """Lines describing every change, and the number of regressions (see the module docstring)."""
    before = {case_id(r): r for r in old if r.get("kind") != "peak"}
    lines, regressions = [], 0
    for rec in new:
        if rec.get("kind") == "peak":
            continue
        prev = before.pop(case_id(rec), None)
        if prev is None:
            lines.append(f"new      {_label(rec)}: {rec.get('status')}")
            continue
        if prev.get("status") == "ok" and rec.get("status") != "ok":
            regressions += 1
            lines.append(f"REGRESSED {_label(rec)}: was ok, now {rec.get('status')} ({rec.get('reason', '')})"[:300])
            continue
        if rec.get("status") != "ok" or prev.get("status") != "ok":
            lines.append(f"         {_label(rec)}: {prev.get('status')} -> {rec.get('status')}")
            continue
        old_m = {name: (value, noise) for name, value, noise in _metrics(prev)}
        for name, value, noise in _metrics(rec):
            was, was_noise = old_m.get(name, (None, None))
            if value is None or not was:
                continue
            bad = _regressed(name, was, value, max(noise or 0.0, was_noise or 0.0), tolerance)
            regressions += bad
            tag = "REGRESSED" if bad else "         "
            lines.append(f"{tag} {_label(rec)} {name}: {was:.4g} -> {value:.4g} ({value / was - 1:+.1%})")
    lines += [f"gone     {_label(r)}" for r in before.values()]
    return lines, regressions
