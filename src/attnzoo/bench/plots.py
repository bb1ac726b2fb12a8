"""PNG plots of benchmark records (needs matplotlib: ``pip install 'attnzoo[plot]'``).

Per setting (device, dtype, causal, B/H/d, load): log-log time vs N (forward and forward+backward) and memory
vs N with each mechanism's fitted exponent in its legend; error vs N per input distribution; attnzoo's
time as a ratio of each public peer's against N.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from attnzoo.bench.contention import load_key, load_suffix
from attnzoo.bench.report import fit_exponent, group_key
from attnzoo.viz import require_matplotlib

__all__ = ["write_plots"]

PASS_TITLES = {"fwd": "forward", "fwdbwd": "forward+backward"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _loglog_panels(
    plt: Any,
    panels: dict[str, dict[str, list[tuple[int, float]]]],
    ylabel: str,
    path: Path,
    *,
    exponents: bool,
    title: str = "",
) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    if title:
        fig.suptitle(title)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for name, pts in sorted(lines.items()):
            pts = sorted(pts)
            label = name
            slope = fit_exponent(pts) if exponents else None
            if slope is not None:
                label = f"{name} (fitted exponent {slope:.2f})"
            ax.plot([n for n, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write the PNGs into ``out_dir``; returns their paths (only plots with data are written).

    Raises:
        ImportError: matplotlib is not installed.
    """
    plt = require_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    settings: dict[str, dict[str, dict[str, dict[str, list[tuple[int, float]]]]]] = {}
    for rec in records:
        if rec.get("kind") != "time" or rec.get("status") != "ok":
            continue
        pass_name, dtype, causal, b, h, d, device, compiled, layer, *load = group_key(rec)
        setting = f"{device} {dtype} B{b} H{h} d{d} {'causal' if causal else 'noncausal'}" + (
            " compiled" if compiled else ""
        )
        setting += " layer" if layer else ""
        setting += load_suffix(*load)
        for metric, key in (("time", "ms"), ("memory", "mem_mib")):
            if rec.get(key):
                panel = settings.setdefault(setting, {}).setdefault(metric, {}).setdefault(PASS_TITLES[pass_name], {})
                panel.setdefault(rec["mechanism"], []).append((rec["seq_len"], rec[key]))
    for setting, metrics in settings.items():
        for metric, panels in metrics.items():
            path = out_dir / f"{metric}-vs-n-{_slug(setting)}.png"
            ylabel = "median time (ms)" if metric == "time" else "peak extra memory (MiB)"
            _loglog_panels(plt, panels, ylabel, path, exponents=metric == "memory", title=setting)
            written.append(path)
    errors: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for rec in records:
        if rec.get("kind") == "error" and rec.get("status") == "ok" and rec["err_softmax"] > 0:
            errors.setdefault(rec["dist"], {}).setdefault(rec["mechanism"], []).append(
                (rec["seq_len"], rec["err_softmax"])
            )
    if errors:
        path = out_dir / "error-vs-n.png"
        _loglog_panels(plt, dict(sorted(errors.items())), "relative error vs fp64 softmax", path, exponents=False)
        written.append(path)
    ratios: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for rec in records:
        if rec.get("kind") == "peer" and rec.get("status") == "ok":
            name = f"{rec['mechanism']} / {rec['peer']}" + load_suffix(*load_key(rec))
            ratios.setdefault(PASS_TITLES[rec["pass"]], {}).setdefault(name, []).append((rec["seq_len"], rec["ratio"]))
    if ratios:
        path = out_dir / "attnzoo-vs-peers.png"
        _loglog_panels(plt, ratios, "attnzoo time / peer time", path, exponents=False)
        written.append(path)
    return written
