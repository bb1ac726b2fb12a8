"""``attnzoo bench --compare OLD.jsonl``: the change of every case against an earlier run, and a verdict.

A case is the same case in both runs when its identity (:func:`case_id`: its case fields, options and load,
so a contended record is never judged against a quiet one) matches. A time is a
regression when ``new > old * (1 + max(tolerance, 3 * noise)) + 0.5 ms``, ``noise`` being the larger
relative inter-quartile range (IQR / median) of the two measurements: a case whose repeats scatter is
given room in proportion, a steady one is held to ``tolerance``; the 0.5 ms absorbs the scheduler's
jitter on sub-millisecond cases. The default tolerance, 20 %, is measured: two back-to-back
``attnzoo bench --quick`` runs of one commit on the quiet 2-core VM (load 1.4-1.6) differed by at
most 15 % on cases over 10 ms (softmax N=2048 forward) and by +21 % (+0.28 ms) on a 1.3 ms case, and
none of their 32 time cases is flagged at 20 % + 0.5 ms, while a run with half the threads
(``OMP_NUM_THREADS=1``) is flagged on every case that is compute-bound (docs/benchmarks.md). A loaded
machine needs far more (``--threshold``): with load average 15-20, back-to-back runs of one commit
differed by up to +127 %. Memory is a regression past
``1.1 x old + 1 MiB`` (the polled measurement is steady to about 1 MiB); an approximation error past
``1.1 x old + 1e-6``; a case that ran before and no longer does (any status but ``ok``) always is.
Cases found in one run only are listed, not judged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnzoo.bench.contention import load_key

__all__ = ["DEFAULT_TOLERANCE", "TIME_SLACK_MS", "case_id", "compare_records", "load_records"]

DEFAULT_TOLERANCE = 0.20
"""Relative time tolerance of ``--compare`` (see the module docstring for how it was measured)."""
TIME_SLACK_MS = 0.5
"""Absolute slack on every time, for sub-millisecond cases."""

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
    "module",
)


def case_id(rec: dict[str, Any]) -> str:
    """A record's identity across runs: its case fields, options and load (:func:`load_key`; a record
    written before loads were recorded is quiet), not its measurements."""
    fields = {**{k: rec.get(k) for k in _ID_FIELDS}, "options": rec.get("options"), "load": load_key(rec)}
    return json.dumps(fields, sort_keys=True)


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
    slack = TIME_SLACK_MS if name in ("ms", "attnzoo_ms") else 0.0
    return new > old * (1.0 + max(tolerance, 3.0 * noise)) + slack


def compare_records(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *, tolerance: float = DEFAULT_TOLERANCE
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
