"""``python -m attnzoo.train train|compare|attention-map ...``: the harness commands on their own.

This is the entry point for ``torchrun``: ``torchrun --nproc_per_node 2 -m attnzoo.train train --task listops-mini``.
"""

from __future__ import annotations

import argparse
import sys

from attnzoo.cli import parse_command_line, run_command
from attnzoo.train.cli import register_commands


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; errors in the config print one line and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m attnzoo.train")
    register_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run_command(parse_command_line(parser, argv), "python -m attnzoo.train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
