"""``attnzoo bench``: time and memory of attention mechanisms against sequence length."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_commands"]

QUICK = {"mechanisms": ["softmax", "local", "dilated", "none"], "lengths": [1024, 2048, 4096], "repeats": 2}


def _parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["local.window_size=128", ...]`` -> ``{"local": {"window_size": 128}}`` (typed per options class)."""
    import attnzoo
    from attnzoo.options import parse_option_string

    found: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        mech, sep, rest = pair.partition(".")
        if not sep:
            raise ValueError(f"--option must look like MECHANISM.NAME=VALUE, got {pair!r}")
        key, value = parse_option_string(attnzoo.options(mech), rest)
        found.setdefault(mech, {})[key] = value
    return found


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from attnzoo.io import atomic_write_text

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _run(args: argparse.Namespace) -> int:
    import attnzoo
    from attnzoo.bench import BenchCase, environment, format_table, run_case

    mechanisms = args.mechanisms or (QUICK["mechanisms"] if args.quick else [s.name for s in attnzoo.available()])
    lengths = args.lengths or (QUICK["lengths"] if args.quick else [1024, 2048, 4096, 8192, 16384])
    repeats = args.repeats or (QUICK["repeats"] if args.quick else 3)
    options = _parse_options(args.option)
    for mech in list(mechanisms) + list(options):
        attnzoo.get_spec(mech)  # unknown names fail before any work
    env = environment()
    print(f"# attnzoo bench: {env}", file=sys.stderr)
    records = []
    for mech in mechanisms:
        for n in lengths:
            case = BenchCase(
                mechanism=mech,
                seq_len=n,
                batch=args.batch,
                heads=args.heads,
                head_dim=args.head_dim,
                dtype=args.dtype,
                causal=args.causal,
                device=args.device,
                options=options.get(mech, {}),
                repeats=repeats,
                backward=not args.forward_only,
                memory=not args.no_memory,
            )
            rec = {**run_case(case), "env": env}
            records.append(rec)
            print(
                f"  {mech:>10} N={n:>6}: fwd {rec['fwd_ms']:.1f} ms, fwd+bwd {rec['fwdbwd_ms'] or 0:.1f} ms",
                file=sys.stderr,
            )
    table = format_table(records)
    print(table)
    if args.out:
        _append_jsonl(Path(args.out), records)
    if args.markdown:
        from attnzoo.io import atomic_write_text

        atomic_write_text(args.markdown, table + "\n")
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo bench`` to the CLI."""
    p = subparsers.add_parser("bench", help="time and peak memory of mechanisms against sequence length")
    p.add_argument("--mechanisms", nargs="+", metavar="NAME", help="default: all (with --quick: a small set)")
    p.add_argument("--lengths", nargs="+", type=int, metavar="N", help="sequence lengths (default 1k..16k)")
    p.add_argument("--quick", action="store_true", help="softmax/local/dilated/none at 1k-4k, under a minute on CPU")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--repeats", type=int, help="timed runs per case (median reported)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MECH.NAME=VALUE",
        help="mechanism option, e.g. local.window_size=128 (repeatable)",
    )
    p.add_argument("--out", help="append JSON-lines records to this file")
    p.add_argument("--markdown", help="write the table to this Markdown file")
    p.set_defaults(func=_run)
