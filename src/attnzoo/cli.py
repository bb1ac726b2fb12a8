"""The ``attnzoo`` command line: ``list``, ``bench``, ``data``, ``train``, ``compare``, ``curves``, ``pattern``, ...

Each subpackage contributes its sub-commands through a ``register_commands(subparsers)`` function;
this module only assembles them, so nothing in the library imports the CLI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

__all__ = [
    "USER_ERRORS",
    "build_parser",
    "main",
    "parse_command_line",
    "positive_float",
    "positive_int",
    "resume_command",
    "run_command",
]


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


def _positive(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0:  # NaN fails too
        word = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {word} > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count or length: a whole number > 0 (the error names the text)."""
    return int(_positive(int, text))


def positive_float(text: str) -> float:
    """argparse ``type=`` for a budget in seconds or MiB: a number > 0 (``inf`` allowed; NaN refused)."""
    return float(_positive(float, text))


USER_ERRORS = (ValueError, TypeError, OSError, ImportError)  # bad value, file, folder, missing extra: one line


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)sub-command parser that ``args`` were parsed by (``attnzoo data generate``'s for that)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                return _leaf_parser(action.choices[chosen], args)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an unknown flag is reported with its sub-command's usage."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def resume_command(prog: str, argv: Sequence[str]) -> str:
    """The command line that continues an interrupted ``train`` run: ``argv`` with ``--resume auto``."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip or item.startswith("--resume="):
            skip = False
            continue
        if item == "--resume":
            skip = True
            continue
        kept.append(item)
    return shlex.join([*prog.split(), *kept, "--resume", "auto"])


def run_command(args: argparse.Namespace, prog: str, argv: Sequence[str]) -> int:
    """Run the parsed command; returns the exit code.

    A user error (``USER_ERRORS``) prints ``<prog> <command>: error: ...`` and gives 2; a training run
    stopped by SIGINT/SIGTERM prints where its checkpoint is and the command that resumes it, and
    gives ``128 + signal`` (130, 143).
    """
    from attnzoo.train.loop import TrainingInterrupted

    name = f"attnzoo {args.command}"
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as stop:
        print(f"{name}: {stop}\nresume with: {resume_command(prog, argv)}", file=sys.stderr, flush=True)
        return stop.exit_code
    except USER_ERRORS as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnzoo`` script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command_line(build_parser(), argv)
    return run_command(args, "attnzoo", argv)


if __name__ == "__main__":
    raise SystemExit(main())
