"""``attnzoo bench``: time, memory, FLOP floor, approximation error and public peers against sequence length."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from attnzoo.bench.compare import DEFAULT_TOLERANCE
from attnzoo.cli import positive_float, positive_int

__all__ = ["register_commands"]

DOCS_BEGIN, DOCS_END = "<!-- attnzoo-bench:begin -->", "<!-- attnzoo-bench:end -->"


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


def _sweep(args: argparse.Namespace) -> tuple[Any, list[str], dict[str, dict[str, Any]]]:
    """The preset with the command line's overrides, the mechanisms, and each one's options."""
    import dataclasses

    import attnzoo
    from attnzoo.bench.settings import PRESETS, Shape, bench_options, parse_shape

    preset = PRESETS["quick" if args.quick else "full" if args.full else args.preset]
    changes: dict[str, Any] = {}
    for name, value in (
        ("lengths", args.lengths),
        ("error_lengths", args.error_lengths),
        ("dtypes", args.dtypes),
        ("peer_lengths", args.peer_lengths),
    ):
        if value:
            changes[name] = tuple(value)
    if args.causal:
        changes["causal"] = {"off": (False,), "on": (True,), "both": (False, True)}[args.causal]
    if args.shapes:
        changes["shapes"] = tuple(parse_shape(s) for s in args.shapes)
    elif any(x is not None for x in (args.batch, args.heads, args.head_dim)):
        first = preset.shapes[0]
        changes["shapes"] = (
            Shape(args.batch or first.batch, args.heads or first.heads, args.head_dim or first.head_dim),
        )
    for name in ("repeats", "time_budget_s", "memory_budget_mib", "block_s"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.forward_only:
        changes["passes"] = ("fwd",)
    preset = dataclasses.replace(preset, **changes)
    mechanisms = args.mechanisms or list(preset.mechanisms or [s.name for s in attnzoo.available()])
    overrides = _parse_options(args.option)
    for mech in overrides:
        if mech not in mechanisms:
            raise ValueError(f"--option for {mech!r}, which is not benchmarked (mechanisms: {', '.join(mechanisms)})")
    return preset, mechanisms, {m: bench_options(m, overrides.get(m), grid_2d=preset.grid_2d) for m in mechanisms}


def _tasks(args: argparse.Namespace, preset: Any, mechanisms: list[str], options: dict[str, Any]) -> list[Any]:
    """Task groups: matmul peaks, time cases per setting, error cases per mechanism, peers (in ``--peers-python``)."""
    import dataclasses

    from attnzoo.bench.accuracy import DISTRIBUTIONS
    from attnzoo.bench.isolate import Group
    from attnzoo.bench.peers import PEERS
    from attnzoo.bench.settings import case_options

    groups = [Group([{"kind": "peak", "device": args.device, "dtype": dt}], fresh=False) for dt in preset.dtypes]
    for case in preset.cases(mechanisms):
        lengths = case.pop("lengths")
        common = {**case, "kind": "time", "device": args.device, "options": options[case["mechanism"]]}
        common.update(repeats=preset.repeats, passes=list(preset.passes), memory=not args.no_memory)
        common["block_s"] = preset.block_s
        common["compile"] = args.compile
        if args.module:
            common["module"] = True
        groups.append(
            Group(
                [
                    {**common, "options": case_options(case["mechanism"], common["options"], n), "seq_len": n}
                    for n in lengths
                ]
            )
        )
    if not args.no_errors:
        for m in mechanisms:
            error = {"kind": "error", "mechanism": m, "options": options[m]}
            tasks = [
                {**error, "options": case_options(m, options[m], n), "seq_len": n, "dist": d}
                for n in sorted(preset.error_lengths)
                for d in DISTRIBUTIONS
            ]
            groups.append(Group(tasks, fresh=False))
    if args.peers:
        shape = preset.shapes[0]
        for peer in (p for p in PEERS if p.mechanism in mechanisms):
            common = {"kind": "peer", "peer": peer.name, "mechanism": peer.mechanism, "differs": peer.differs}
            common.update(dataclasses.asdict(shape), dtype=preset.dtypes[0])
            common.update(causal=False, device=args.device, options=options[peer.mechanism], repeats=preset.repeats)
            common["passes"] = list(preset.passes)
            groups.append(
                Group(
                    [
                        {**common, "options": case_options(peer.mechanism, common["options"], n), "seq_len": n}
                        for n in sorted(preset.peer_lengths)
                    ],
                    python=args.peers_python,
                )
            )
    return groups


def _command(preset: Any, mechanisms: list[str], args: argparse.Namespace) -> str:
    """The explicit command line that reruns this sweep."""
    argv = [
        "attnzoo",
        "bench",
        "--mechanisms",
        *mechanisms,
        "--lengths",
        *map(str, preset.lengths),
        "--dtypes",
        *preset.dtypes,
        "--causal",
        {(False,): "off", (True,): "on"}.get(preset.causal, "both"),
        "--shapes",
        *(s.label() for s in preset.shapes),
        "--repeats",
        str(preset.repeats),
        "--block-s",
        f"{preset.block_s:g}",
        "--device",
        args.device,
        "--error-lengths",
        *map(str, preset.error_lengths),
        "--time-budget-s",
        f"{preset.time_budget_s:g}",
        "--memory-budget-mib",
        f"{preset.memory_budget_mib:g}",
    ]
    argv += [
        f"--option={m}.{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for m, opts in _parse_options(args.option).items()
        for k, v in opts.items()
    ]
    for flag in ("forward_only", "no_memory", "no_errors", "compile", "module"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if args.contention != [0]:
        argv += ["--contention", *map(str, args.contention), "--contention-kind", args.contention_kind]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.peers:
        argv += ["--peers", "--peer-lengths", *map(str, preset.peer_lengths)]
    return shlex.join(argv)


def _progress(records: list[dict[str, Any]]) -> None:
    for r in records:
        what = r.get("peer") or r.get("mechanism") or r["kind"]
        detail = {k: round(r[k], 3) for k in ("ms", "peer_ms", "attnzoo_ms", "err_softmax", "mem_mib") if r.get(k)}
        label = r.get("pass") or r.get("dist") or ""
        print(
            f"  {r['kind']:>5} {what:>14} N={r.get('seq_len', '-')!s:>6} {label:>15}: {r['status']} {detail}",
            file=sys.stderr,
        )


def _keep(records: list[dict[str, Any]], fields: dict[str, Any], part: list[dict[str, Any]]) -> None:
    """Print ``part``'s progress lines and add its records, with ``fields``, to ``records`` as they arrive."""
    _progress(part)
    records.extend({**r, **fields} for r in part)


def _check_destinations(args: argparse.Namespace) -> None:
    """Raises ValueError before the sweep when an output path cannot be written (a folder where a file goes,
    or a file where the folder goes)."""
    for flag, value, folder in (("--out", args.out, False), ("--markdown", args.markdown, False),
                                ("--out-dir", args.out_dir, True)):  # fmt: skip
        if value and Path(value).exists() and Path(value).is_dir() != folder:
            kind = "a file" if folder else "a folder"
            raise ValueError(f"{flag} {value!r} is {kind}; it must name {'a folder' if folder else 'a file'}")


def _write_records(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    """Save the sweep's records (``--out`` appended to, ``--out-dir``'s records.jsonl and .csv)."""
    from attnzoo.bench.report import to_csv
    from attnzoo.io import atomic_write_text

    lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
    if args.out:
        path = Path(args.out)
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        atomic_write_text(path, old + ("\n" if old and not old.endswith("\n") else "") + lines)
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "records.jsonl", lines)
        atomic_write_text(out_dir / "records.csv", to_csv(records))


def _write_outputs(args: argparse.Namespace, records: list[dict[str, Any]], report: str) -> None:
    """Write the report (``--out-dir``'s report.md and plots, ``--markdown``, ``--docs``)."""
    from attnzoo.io import atomic_write_text

    if args.out_dir:
        out_dir = Path(args.out_dir)
        atomic_write_text(out_dir / "report.md", report)
        try:
            from attnzoo.bench.plots import write_plots

            write_plots(records, out_dir)
        except ImportError as err:
            print(f"# no plots: {err}", file=sys.stderr)
    if args.markdown:
        atomic_write_text(args.markdown, report)
    if args.docs:
        _splice_docs(Path(args.docs), report)


def _docs_section(path: Path) -> tuple[str, int, int]:
    """The text of ``path`` and where its bench section starts and ends.

    Raises:
        ValueError: no ``DOCS_BEGIN ... DOCS_END`` section.
    """
    text = path.read_text(encoding="utf-8")
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {DOCS_BEGIN} ... {DOCS_END} section to fill")
    return text, start, end


def _splice_docs(path: Path, report: str) -> None:
    """Replace what lies between the bench markers of ``path`` with ``report``."""
    from attnzoo.io import atomic_write_text

    text, start, end = _docs_section(path)
    atomic_write_text(path, text[: start + len(DOCS_BEGIN)] + "\n\n" + report + "\n" + text[end:])


def _compare(old_path: str, records: list[dict[str, Any]], threshold: float) -> int:
    from attnzoo.bench.compare import compare_records, load_records

    lines, regressions = compare_records(load_records(old_path), records, tolerance=threshold)
    print("\n".join(lines))
    print(f"# {regressions} regression(s) against {old_path} (tolerance {threshold:.0%})")
    return 1 if regressions else 0


def _run(args: argparse.Namespace) -> int:
    from attnzoo.bench.compare import load_records
    from attnzoo.bench.contention import Contention, load_label
    from attnzoo.bench.isolate import run_groups
    from attnzoo.bench.report import add_floor, format_report
    from attnzoo.bench.run import environment

    if args.against:
        if not args.compare:
            raise ValueError("--against NEW.jsonl needs --compare OLD.jsonl")
        return _compare(args.compare, load_records(args.against), args.threshold)
    if args.docs:
        _docs_section(Path(args.docs))  # fail before the sweep, not after
    _check_destinations(args)
    if len(set(args.contention)) < len(args.contention):
        raise ValueError(f"--contention {' '.join(map(str, args.contention))}: give each number of busy processes once")
    preset, mechanisms, options = _sweep(args)
    env = environment()
    print(f"# attnzoo bench: {env}", file=sys.stderr)
    groups = _tasks(args, preset, mechanisms, options)
    records: list[dict[str, Any]] = []
    try:
        for count in args.contention:  # the whole sweep once per load, quiet first when asked
            with Contention(count, args.contention_kind) as load:
                pids = f" (pids {', '.join(map(str, load.pids))})" if load.pids else ""
                print(f"# load: {load_label(count, args.contention_kind, args.threads)}{pids}", file=sys.stderr)
                first = len(records)
                run_groups(
                    groups,
                    timeout=preset.time_budget_s,
                    memory_budget_mib=preset.memory_budget_mib,
                    python=sys.executable,
                    env={"ATTNZOO_BENCH_THREADS": str(args.threads)} if args.threads else None,
                    on_records=functools.partial(_keep, records, {"env": env, **load.fields()}),
                )
                try:
                    load.check()
                except RuntimeError:
                    for record in records[first:]:
                        record["load_incomplete"] = True  # measured while fewer busy processes ran
                    raise
    except BaseException:
        if records:  # a sweep stopped early (an error, Ctrl-C, a busy process gone) keeps what it measured
            add_floor(records)
            _write_records(args, records)
            print(f"# attnzoo bench: stopped early; the {len(records)} records measured are written", file=sys.stderr)
        raise
    add_floor(records)
    _write_records(args, records)  # before the report: a sweep is never lost to a reporting error
    report = format_report(records, env, _command(preset, mechanisms, args))
    print(report)
    _write_outputs(args, records, report)
    return _compare(args.compare, records, args.threshold) if args.compare else 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo bench`` and ``attnzoo bench-decode`` to the CLI."""
    from attnzoo.bench.contention import CONTENTION_KINDS, DEFAULT_KIND, contention_count
    from attnzoo.bench.settings import PRESETS

    p = subparsers.add_parser("bench", help="time, memory, FLOP floor, approximation error and peers vs length")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="sweep (default: default)")
    p.add_argument("--quick", action="store_true", help="the quick preset: under a minute on a 2-core CPU")
    p.add_argument("--full", action="store_true", help="the full preset, for GPUs")
    p.add_argument("--mechanisms", nargs="+", metavar="NAME", help="default: the preset's (all registered)")
    p.add_argument("--lengths", nargs="+", type=positive_int, metavar="N")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--causal", choices=["off", "on", "both"])
    p.add_argument("--shapes", nargs="+", metavar="BxHxD", help="batch x heads x head dim, e.g. 1x8x64")
    p.add_argument("--batch", type=positive_int)
    p.add_argument("--heads", type=positive_int)
    p.add_argument("--head-dim", type=positive_int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=positive_int, help="timed blocks per case (median and IQR reported)")
    p.add_argument(
        "--block-s",
        type=positive_float,
        help="least seconds of calls in one timed block (default: the preset's, 0.01 mostly)",
    )
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--compile", action="store_true", help="torch.compile each attention core (compile time apart)")
    p.add_argument(
        "--module",
        action="store_true",
        help="time the whole layer module(x), projections included, instead of its attention core (no FLOP floor)",
    )
    p.add_argument(
        "--contention",
        type=contention_count,
        nargs="+",
        default=[0],
        metavar="K",
        help="run K busy one-thread processes beside the benchmark (shared cores); several K: the sweep once "
        "per K, in order, with a quiet-vs-contended table (e.g. 0 2; default 0: quiet)",
    )
    p.add_argument(
        "--contention-kind",
        choices=CONTENTION_KINDS,
        default=DEFAULT_KIND,
        help=f"what each busy process runs (default {DEFAULT_KIND}): an MLP training step, a matmul, a Python loop",
    )
    p.add_argument("--threads", type=positive_int, metavar="T", help="torch.set_num_threads(T) in every worker")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MECH.NAME=VALUE",
        help="mechanism option over its benchmark setting, e.g. local.window_size=128 (repeatable)",
    )
    p.add_argument("--time-budget-s", type=positive_float, help="seconds per case before it is recorded as timeout")
    p.add_argument("--memory-budget-mib", type=positive_float, help="peak MiB past which a case is over budget")
    p.add_argument("--error-lengths", nargs="+", type=positive_int, metavar="N")
    p.add_argument("--no-errors", action="store_true", help="skip the approximation-error cases")
    p.add_argument("--peers", action="store_true", help="run the public implementations side by side")
    p.add_argument("--peer-lengths", nargs="+", type=positive_int, metavar="N")
    p.add_argument("--peers-python", metavar="PYTHON", help="interpreter with the peer packages (peer workers)")
    p.add_argument("--out", help="append JSON-lines records to this file")
    p.add_argument("--out-dir", help="write records.jsonl, records.csv, report.md and PNG plots here")
    p.add_argument("--markdown", help="write the Markdown report to this file")
    p.add_argument("--docs", metavar="FILE", help=f"put the report between {DOCS_BEGIN} and {DOCS_END} of FILE")
    p.add_argument("--compare", metavar="OLD.jsonl", help="compare with an earlier run; exit 1 on a regression")
    p.add_argument("--against", metavar="NEW.jsonl", help="with --compare: compare two files, run nothing")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"time tolerance for --compare (default {DEFAULT_TOLERANCE}, measured on this machine)",
    )
    p.set_defaults(func=_run)

    from attnzoo.bench.decode import register_decode_command

    register_decode_command(subparsers)
