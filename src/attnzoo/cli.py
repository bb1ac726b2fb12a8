"""The ``attnzoo`` command line: ``list``, ``bench``, ``data``, ``train``, ``compare``, ``curves``, ``pattern``, ...

Each subpackage contributes its sub-commands through a ``register_commands(subparsers)`` function;
this module only assembles them, so nothing in the library imports the CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``attnzoo`` argument parser with every sub-command."""
    from attnzoo.bench.cli import register_commands as bench_commands
    from attnzoo.factorize.cli import register_commands as factorize_commands
    from attnzoo.mechanisms.cli import register_commands as mechanism_commands
    from attnzoo.tasks.cli import register_commands as task_commands
    from attnzoo.train.cli import register_commands as train_commands
    from attnzoo.train.generate import register_commands as generate_commands
    from attnzoo.viz.curves import register_commands as curves_commands
    from attnzoo.viz.pattern import register_commands as pattern_commands

    parser = argparse.ArgumentParser(prog="attnzoo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = (
        mechanism_commands,
        bench_commands,
        task_commands,
        train_commands,
        generate_commands,
        pattern_commands,
        curves_commands,
        factorize_commands,
    )
    for register in commands:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnzoo`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"attnzoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
