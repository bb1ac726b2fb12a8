"""Benchmark records -> FLOP floor, scaling exponents, crossovers and Markdown / CSV tables.

Records are flat dicts (see :func:`attnzoo.bench.run.run_case`, :mod:`attnzoo.bench.accuracy`,
:mod:`attnzoo.bench.worker`); a record whose ``status`` is not ``ok`` shows its status in the tables.
Records of runs under different loads (``--contention``, ``--threads``: :func:`attnzoo.bench.contention.load_key`)
are tabled apart; when quiet and contended runs are both present, one table puts each mechanism's ratio to
softmax and to its public peer under each load side by side.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Iterable
from typing import Any

from attnzoo.bench.contention import load_key, load_label, load_suffix

__all__ = [
    "add_floor",
    "crossovers",
    "fit_exponent",
    "format_report",
    "group_key",
    "load_ratios",
    "scaling_exponents",
    "to_csv",
]


def group_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The setting a time record belongs to: ``(pass, dtype, causal, B, H, d, device, compile, module, K, kind,
    threads)``, ``module`` True for whole-layer timings (``--module``), the last three its load
    (:func:`attnzoo.bench.contention.load_key`)."""
    fields = ("pass", "dtype", "causal", "batch", "heads", "head_dim", "device", "compile")
    return (*(rec.get(k) for k in fields), bool(rec.get("module")), *load_key(rec))


def _ok(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == kind and r.get("status") == "ok"]


def add_floor(records: list[dict[str, Any]]) -> None:
    """Give every ok time record with ``flops`` its ``gflops``, ``floor_ms`` and ``x_floor`` (in place),
    from the ``peak`` record of its device, dtype and load (the matmul peak measured beside the same busy
    processes)."""
    peaks = {(r["device"], r["dtype"], *load_key(r)): r["flops_per_s"] for r in _ok(records, "peak")}
    for rec in _ok(records, "time"):
        peak = peaks.get((rec["device"], rec["dtype"], *load_key(rec)))
        if rec.get("flops") and rec.get("ms"):
            rec["gflops"] = rec["flops"] / rec["ms"] / 1e6
            if peak:
                rec["floor_ms"] = 1e3 * rec["flops"] / peak
                rec["x_floor"] = rec["ms"] / rec["floor_ms"]


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of ``log y`` on ``log N`` (1 = linear, 2 = quadratic); None under two points."""
    pts = [(math.log(n), math.log(y)) for n, y in points if y and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _series(records: list[dict[str, Any]], key: str) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    """``{(mechanism, *group_key): [(N, value), ...]}`` over ok time records, N ascending."""
    out: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    for rec in sorted(_ok(records, "time"), key=lambda r: r["seq_len"]):
        if rec.get(key) is not None:
            out.setdefault((rec["mechanism"], *group_key(rec)), []).append((rec["seq_len"], rec[key]))
    return out


def scaling_exponents(records: list[dict[str, Any]], key: str) -> dict[tuple[Any, ...], float]:
    """Log-log slope of ``key`` from the previous measured length: ``{(mechanism, *group_key, N): slope}``."""
    slopes = {}
    for series_key, pts in _series(records, key).items():
        for (n0, y0), (n1, y1) in itertools.pairwise(pts):
            if y0 > 0 and y1 > 0:
                slopes[(*series_key, n1)] = math.log(y1 / y0) / math.log(n1 / n0)
    return slopes


def crossovers(records: list[dict[str, Any]], key: str, baseline: str = "softmax") -> dict[tuple[Any, ...], str]:
    """Smallest N from which each mechanism stays below ``baseline`` in ``key``: ``{(mechanism, *group): text}``.

    ``"<= N0"`` when it is below from the smallest length measured, ``"never (to N1)"`` when not at the
    largest, ``"-"`` without a baseline at the same lengths.
    """
    series = _series(records, key)
    out = {}
    for (mech, *group), pts in series.items():
        base = dict(series.get((baseline, *group), []))
        shared = [(n, y) for n, y in pts if n in base]
        if mech == baseline or not shared:
            continue
        below = [y < base[n] for n, y in shared]
        if not below[-1]:
            out[(mech, *group)] = f"never (to {shared[-1][0]})"
            continue
        first = next(i for i in range(len(below)) if all(below[i:]))
        out[(mech, *group)] = f"<= {shared[0][0]}" if first == 0 else str(shared[first][0])
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (abs(value) >= 1e5 or 0 < abs(value) < 0.01):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _setting(key: tuple[Any, ...]) -> str:
    """A :func:`group_key` in words (its pass left out); the load is named unless it is quiet at the default
    threads."""
    _, dtype, causal, b, h, d, device, compiled, layer, count, kind, threads = key
    return (
        f"{device}, {dtype}, B={b} H={h} d={d}, {'causal' if causal else 'non-causal'}"
        + (", torch.compile" if compiled else "")
        + (", whole layer (projections included)" if layer else "")
        + load_suffix(count, kind, threads)
    )


def _time_tables(records: list[dict[str, Any]]) -> list[str]:
    times = [r for r in records if r.get("kind") == "time"]
    by_setting: dict[tuple[Any, ...], dict[tuple[str, int], dict[str, dict[str, Any]]]] = {}
    for rec in times:
        setting = (None, *group_key(rec)[1:])
        by_setting.setdefault(setting, {}).setdefault((rec["mechanism"], rec["seq_len"]), {})[rec["pass"]] = rec
    t_exp, m_exp = scaling_exponents(records, "ms"), scaling_exponents(records, "mem_mib")
    out = []
    for setting, cells in sorted(by_setting.items(), key=lambda kv: str(kv[0])):
        base = {n: p.get("fwdbwd", p.get("fwd")) for (m, n), p in cells.items() if m == "softmax"}
        rows = []
        for (mech, n), passes in sorted(cells.items()):
            fwd, both = passes.get("fwd", {}), passes.get("fwdbwd", {})
            main = both if both.get("status") == "ok" else fwd
            ref = base.get(n) or {}
            ratio = (
                main.get("ms") / ref["ms"]
                if main.get("ms") and ref.get("ms") and ref["pass"] == main.get("pass")
                else None
            )
            key = (mech, main.get("pass"), *setting[1:], n)

            def cell(rec: dict[str, Any], field: str, digits: int = 1) -> str:
                return _f(rec.get(field), digits) if rec.get("status") == "ok" else rec.get("status", "-")

            spread = f" ±{_f(fwd.get('iqr_ms'))}" if fwd.get("status") == "ok" else ""
            rows.append(
                [
                    mech,
                    str(n),
                    cell(fwd, "ms") + spread,
                    cell(both, "ms"),
                    _f(ratio, 3),
                    cell(fwd, "mem_mib"),
                    cell(both, "mem_mib"),
                    _f(main.get("gflops")),
                    _f(main.get("x_floor"), 2),
                    _f(t_exp.get(key), 2),
                    _f(m_exp.get(key), 2),
                ]
            )
        header = [
            "mechanism",
            "N",
            "fwd ms (±IQR)",
            "fwd+bwd ms",
            "/ softmax",
            "fwd MiB",
            "fwd+bwd MiB",
            "GFLOP/s",
            "x floor",
            "time exp.",
            "mem exp.",
        ]
        out.append(f"#### {_setting(setting)}\n\n{_table(header, rows)}")
    return out


def _crossover_table(records: list[dict[str, Any]]) -> str:
    by_time, by_mem = crossovers(records, "ms"), crossovers(records, "mem_mib")
    rows = [
        [key[0], key[1], _setting((None, *key[2:])), text, by_mem.get(key, "-")]
        for key, text in sorted(by_time.items(), key=str)
    ]
    return _table(["mechanism", "pass", "setting", "beats softmax in time from N", "in memory from N"], rows)


def _error_table(records: list[dict[str, Any]]) -> str:
    errs = [r for r in records if r.get("kind") == "error"]
    dists = sorted({r["dist"] for r in errs})
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for rec in errs:
        cells.setdefault((rec["mechanism"], rec["seq_len"]), {})[rec["dist"]] = rec
    rows = []
    for (mech, n), by_dist in sorted(cells.items()):
        exact = any(r.get("exact") for r in by_dist.values())
        vals = [
            f"{_f(r.get('err_softmax'), 3)} / {_f(r.get('err_fp64'), 3)}"
            if r.get("status") == "ok"
            else r.get("status")
            for r in (by_dist.get(d, {}) for d in dists)
        ]
        rows.append([mech + (" (exact)" if exact else ""), str(n), *[v or "-" for v in vals]])
    return _table(["mechanism", "N", *dists], rows)


def _peer_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for rec in sorted(
        (r for r in records if r.get("kind") == "peer"),
        key=lambda r: (r["peer"], str(load_key(r)), r["seq_len"], r["pass"]),
    ):
        ok = rec.get("status") == "ok"
        rows.append(
            [
                rec["peer"] + load_suffix(*load_key(rec)),
                rec.get("mechanism", "-"),
                str(rec["seq_len"]),
                rec["pass"],
                _f(rec.get("peer_ms")) if ok else rec.get("status", "-"),
                _f(rec.get("attnzoo_ms")),
                _f(rec.get("ratio"), 3),
                _f(rec.get("peer_mem_mib")),
                _f(rec.get("attnzoo_mem_mib")),
                _f(rec.get("out_rel_diff"), 3),
            ]
        )
    header = [
        "peer",
        "attnzoo",
        "N",
        "pass",
        "peer ms",
        "attnzoo ms",
        "attnzoo / peer",
        "peer MiB",
        "attnzoo MiB",
        "output rel. diff",
    ]
    notes = {(r["peer"], r.get("mechanism", "-"), r.get("differs", "")) for r in records if r.get("kind") == "peer"}
    lines = [f"- `{p}` vs `{m}`: {d}" for p, m, d in sorted(notes)]
    missing = sorted(
        {
            f"`{r['peer']}` ({r.get('reason')})"
            for r in records
            if r.get("kind") == "peer" and r.get("status") == "missing"
        }
    )
    tail = "\n\nNot installed: " + ", ".join(missing) if missing else ""
    return _table(header, rows) + "\n\nWhat differs in each pair:\n\n" + "\n".join(lines) + tail


def load_ratios(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[tuple[int, str | None], float]]:
    """Every ratio a mechanism is judged by, per load: ``{(mechanism, against, N, setting): {(K, kind): ratio}}``.

    ``against`` is ``softmax`` for ok time records (time over softmax's ok record of the same
    :func:`group_key` and N, so the same load) and the peer's name for ok peer records (their
    ``attnzoo / peer``). ``setting`` is the :func:`group_key` with the busy processes (K, kind) set to
    quiet's ``(0, None)``: they are the inner key, so a case's quiet and contended ratios sit together.
    """
    times = _ok(records, "time")
    softmax = {(group_key(r), r["seq_len"]): r["ms"] for r in times if r["mechanism"] == "softmax" and r.get("ms")}
    pairs = [
        (r, "softmax", r["ms"] / softmax[(group_key(r), r["seq_len"])])
        for r in times
        if r["mechanism"] != "softmax" and r.get("ms") and (group_key(r), r["seq_len"]) in softmax
    ]
    pairs += [(r, r["peer"], r["ratio"]) for r in _ok(records, "peer") if r.get("ratio")]
    out: dict[tuple[Any, ...], dict[tuple[int, str | None], float]] = {}
    for rec, against, ratio in pairs:
        key = group_key(rec)
        *case, count, kind, threads = key
        out.setdefault((rec["mechanism"], against, rec["seq_len"], (*case, 0, None, threads)), {})[(count, kind)] = (
            ratio
        )
    return out


def _load_table(records: list[dict[str, Any]]) -> str | None:
    """Quiet and contended ratios side by side (:func:`load_ratios`); None unless both kinds of run are present."""
    ratios = load_ratios(records)
    contended = sorted({load for by_load in ratios.values() for load in by_load if load[0]}, key=str)
    if not contended or not any((0, None) in by_load for by_load in ratios.values()):
        return None
    rows = []
    for (mech, against, n, setting), by_load in sorted(
        ratios.items(), key=lambda kv: (*kv[0][:2], str(kv[0][3]), kv[0][2])
    ):
        quiet = by_load.get((0, None))
        changes = [by_load[load] / quiet for load in contended if load in by_load and quiet]
        rows.append(
            [
                mech,
                against,
                str(n),
                setting[0],
                _setting(setting),
                _f(quiet, 3),
                *(_f(by_load.get(load), 3) for load in contended),
                _f(max(changes), 2) if changes else "-",
            ]
        )
    header = ["mechanism", "against", "N", "pass", "setting", "quiet", *(load_label(*load) for load in contended)]
    return _table([*header, "worst contended / quiet"], rows)


def format_report(records: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    """The Markdown report: machine, command, time/memory/floor tables, crossovers, errors, peers, failures."""
    peaks = ", ".join(
        f"{r['device']} {r['dtype']}{load_suffix(*load_key(r))} {r['flops_per_s'] / 1e9:.1f} GFLOP/s"
        for r in _ok(records, "peak")
    )
    parts = [
        f"Machine: {json.dumps(env, sort_keys=True)}. Matmul peak (measured): {peaks or 'not measured'}.",
        f"Command: `{command}`",
        "### Time, memory and FLOP floor",
        *_time_tables(records),
    ]
    if any(r.get("kind") == "time" for r in records):
        parts += ["### Crossover with softmax", _crossover_table(records)]
    compiled = [r for r in _ok(records, "time") if r.get("compile_ms") is not None]
    if compiled:
        rows = [
            [
                r["mechanism"],
                str(r["seq_len"]),
                r["pass"],
                r.get("executor", "-"),
                _f(r["first_ms"]),
                _f(r["ms"]),
                _f(r["compile_ms"]),
            ]
            for r in compiled
        ]
        header = ["mechanism", "N", "pass", "executor", "first call ms", "median ms", "compile ms (first - median)"]
        parts += ["### Compile time of compiled paths (not in the times above)", _table(header, rows)]
    if any(r.get("kind") == "error" for r in records):
        parts += ["### Approximation error (relative, vs fp64 softmax / vs itself in fp64)", _error_table(records)]
    if any(r.get("kind") == "peer" for r in records):
        parts += ["### Public peers (same q, k, v; projections bypassed)", _peer_table(records)]
    loads = _load_table(records)
    if loads:
        parts += [
            "### Ratio to softmax/peer, quiet vs contended",
            "Each cell is the mechanism's time over softmax's (or attnzoo's over the peer's) measured under that "
            "load; the last column is the largest contended ratio over the quiet one (1.00: the busy processes "
            "slow the mechanism exactly as much as its baseline).",
            loads,
        ]
    bad = [r for r in records if r.get("status") not in ("ok", "missing")]
    if bad:
        rows = [
            [
                r.get("kind", "-"),
                r.get("peer") or r.get("mechanism", "-"),
                str(r.get("seq_len", "-")),
                str(r.get("pass", r.get("dist", "-"))),
                r["status"],
                str(r.get("reason", ""))[:160].replace("|", "/"),
            ]
            for r in bad
        ]
        parts += [
            "### Not measured (recorded, not dropped)",
            _table(["kind", "what", "N", "pass", "status", "why"], rows),
        ]
    return "\n\n".join(parts) + "\n"


def to_csv(records: list[dict[str, Any]]) -> str:
    """All records as CSV (union of the keys; nested values as JSON; ``env`` left out)."""
    keys = sorted({k for r in records for k in r if k != "env"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in rec.items() if k != "env"})
    return buf.getvalue()
