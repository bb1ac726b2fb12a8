"""Markdown table of each mechanism's time over softmax's, from benchmark records (same run, same setting).

Usage: python3 scripts/ratio_table.py docs/bench/short/records.jsonl [--passes fwd fwdbwd]

One row per (causal, batch, N); one column per mechanism and pass: its median (or best) time over softmax's
of the same pass, causality, shape, path (core or whole layer) and load; the worst ratio of each mechanism is
printed below the table.
"""

from __future__ import annotations

import argparse

from attnzoo.bench.compare import load_records
from attnzoo.bench.report import group_key


def main() -> None:
    """Print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records")
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwdbwd"])
    parser.add_argument("--stat", choices=["ms", "min_ms"], default="ms", help="median (ms) or best block (min_ms)")
    args = parser.parse_args()
    times = [r for r in load_records(args.records) if r.get("kind") == "time" and r.get("status") == "ok"]
    softmax = {(group_key(r), r["seq_len"]): r[args.stat] for r in times if r["mechanism"] == "softmax"}
    mechanisms = sorted({r["mechanism"] for r in times} - {"softmax"})
    ratios: dict[tuple[bool, int, int], dict[tuple[str, str], float]] = {}
    for r in times:
        base = softmax.get((group_key(r), r["seq_len"]))
        if r["mechanism"] != "softmax" and base and r["pass"] in args.passes:
            ratios.setdefault((r["causal"], r["batch"], r["seq_len"]), {})[(r["mechanism"], r["pass"])] = (
                r[args.stat] / base
            )
    columns = [(m, p) for m in mechanisms for p in args.passes]
    print("| causal | B | N | " + " | ".join(f"{m} {p}" for m, p in columns) + " |")
    print("|---|---:|---:|" + "---:|" * len(columns))
    for (causal, batch, n), row in sorted(ratios.items()):
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in columns]
        print(f"| {'yes' if causal else 'no'} | {batch} | {n} | " + " | ".join(cells) + " |")
    for m in mechanisms:
        worst = max((v, k) for row in ratios.values() for k, v in row.items() if k[0] == m)
        print(f"\nworst {m}: {worst[0]:.2f} ({worst[1][1]})", end="")
    print()


if __name__ == "__main__":
    main()
