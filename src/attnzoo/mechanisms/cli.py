"""``attnzoo list``: the mechanism table with capability flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["mechanism_table", "register_commands"]


def mechanism_table() -> str:
    """A Markdown table of every registered mechanism and its capabilities."""
    from attnzoo.registry import available

    head = "| name | causal | padding mask | cross | exact | deterministic | CPU backward | time | memory | summary |"
    rows = [head, "|" + "---|" * 10]
    yes = {True: "yes", False: "no"}
    for spec in available():
        c = spec.capabilities
        rows.append(
            f"| `{spec.name}` | {yes[c.causal]} | {yes[c.key_padding_mask]} | {yes[c.cross_attention]} | "
            f"{yes[c.exact]} | {yes[c.deterministic]} | {yes[c.cpu_backward]} | {c.time} | {c.memory} | "
            f"{spec.summary} |"
        )
    return "\n".join(rows)


def _run_list(args: argparse.Namespace) -> int:
    import attnzoo

    if args.json:
        rows: list[dict[str, Any]] = [spec.as_row() for spec in attnzoo.available()]
        print(json.dumps(rows, indent=2))
    else:
        print(mechanism_table())
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo list`` to the CLI."""
    parser = subparsers.add_parser("list", help="list attention mechanisms and their capabilities")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.set_defaults(func=_run_list)
