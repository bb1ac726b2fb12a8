"""``attnzoo data``: ``list``, ``generate TASK --out DIR``, ``info DIR`` and ``bench`` (generation rates, load time)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["register_commands"]


def _list(args: argparse.Namespace) -> int:
    from attnzoo import tasks

    print(
        f"{'name':<20}{'N':>7}  {'input':<11}{'vocab':>6}{'classes':>8}  {'target':<11}{'paired':<7}{'pad':>4}  metric"
    )
    for s in tasks.available():
        print(
            f"{s.name:<20}{s.seq_len:>7}  {s.input_kind:<11}{s.vocab_size:>6}{s.num_classes:>8}  {s.target:<11}"
            f"{'yes' if s.paired else 'no':<7}{s.pad_id:>4}  {s.metric}"
        )
    return 0


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _write_splits(args: argparse.Namespace, task: Any, opts: Any, out: Path) -> list[str]:
    """Generate the requested splits of ``task`` into ``out``; returns one line per split."""
    from attnzoo.tasks.cache import write_entry
    from attnzoo.tasks.spec import SPLITS

    lines = []
    for split in args.splits or SPLITS:
        size = args.size if args.size is not None else task.sizes[split]
        if task.export is not None:
            files = task.export(opts, split, size, args.seed, out)
            lines.append(f"{split}: {size} examples -> {files[0].parent if len(files) > 1 else files[0]}")
        else:
            header = {
                "task": args.task,
                "version": task.version,
                "split": split,
                "seed": args.seed,
                "size": size,
                "options": dataclasses.asdict(opts),
                "spec": dataclasses.asdict(task.describe(opts)),
            }
            write_entry(
                out / split, task.generate(opts, split, size, args.seed), {**header, "source_hash": "generated"}
            )
            lines.append(f"{split}: {size} examples -> {out / split}")
    return lines


def _files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_dir())


def _generate(args: argparse.Namespace) -> int:
    """Write the splits into ``--out``. A folder that already holds files is written only with ``--overwrite``:
    otherwise the splits are generated beside it and moved in when none of their files exists there yet."""
    from attnzoo.tasks.spec import get_task

    task = get_task(args.task)
    opts = task.options(**_options(args.option))
    if task.generate is None:
        raise ValueError(f"task {args.task!r} cannot be generated ({task.files_hint})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file, not a folder")
    if args.overwrite or not out.exists() or not any(out.iterdir()):
        lines = _write_splits(args, task, opts, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as staging:
            lines = [line.replace(staging, str(out)) for line in _write_splits(args, task, opts, Path(staging))]
            new = _files_under(Path(staging))
            taken = [str(name) for name in new if (out / name).exists()]
            if taken:
                shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
                raise FileExistsError(f"{out} already holds {shown}; pass --overwrite to replace them or another --out")
            for name in new:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(staging) / name, out / name)
    print("\n".join(lines))
    return 0


def _info(args: argparse.Namespace) -> int:
    from attnzoo.tasks.cache import read_header

    root = Path(args.dir)
    headers = sorted(p.parent for p in root.rglob("header.json"))
    tsvs, metas = sorted(root.rglob("*.tsv")), sorted(root.rglob("metadata"))
    if not (headers or tsvs or metas):
        raise ValueError(f"{root}: no cache entries (header.json), TSV files or Pathfinder metadata/ folders found")
    for folder in headers:
        h = read_header(folder) or {}
        shapes = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in h.get("arrays", {}).items())
        print(
            f"{folder}: task={h.get('task')} split={h.get('split')} seed={h.get('seed')} "
            f"examples={h.get('examples')} {shapes}"
        )
    for path in tsvs:
        with open(path, encoding="utf-8") as handle:
            print(f"{path}: {sum(1 for _ in handle)} lines")
    for meta in metas:
        files = sorted(meta.glob("*.npy"))
        lines = sum(len(f.read_text(encoding="utf-8").split("\n")) - 1 for f in files)
        print(f"{meta.parent}: pathfinder layout, {len(files)} metadata files, {lines} images")
    return 0


def _rate(fn: Any, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def _bench(args: argparse.Namespace) -> int:
    from attnzoo import tasks
    from attnzoo.tasks.lra import listops
    from attnzoo.tasks.lra.pathfinder import generate_images
    from attnzoo.tasks.lra.pathfinder_params import lra_params
    from attnzoo.tasks.lra.pathfinder_ref import generate_image

    rows = []
    lo = listops.ListOpsOptions()
    rows.append(("listops", _rate(lambda n: listops.generate_examples(lo, "train", n, 0), args.listops)))
    for res, n in ((32, args.pathfinder), (128, max(1, args.pathfinder // 2))):
        p = lra_params(res)
        vec = _rate(lambda k, p=p: generate_images(p, k, 0, "train"), n)
        ref = _rate(lambda k, p=p: [generate_image(p, random.Random(i)) for i in range(k)], max(2, n // 16))
        rows.append((f"pathfinder{res}", vec))
        rows.append((f"pathfinder{res} (per-image Python reference)", ref))
        print(f"pathfinder{res}: vectorised {vec:.1f} img/s, reference {ref:.1f} img/s, speed-up {vec / ref:.1f}x")
    for name, rate in rows:
        print(f"generate {name:<48} {rate:10.1f} examples/s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tasks.load_split("temporal-order", "train", cache_dir=tmp, size=args.load_size, seed=1)
        built = time.perf_counter() - start
        start = time.perf_counter()
        ds = tasks.load_split("temporal-order", "train", cache_dir=tmp, size=args.load_size, seed=1)
        _ = ds[len(ds) - 1]
        print(
            f"cached temporal-order (N=1024) split of {len(ds)} examples: built in {built:.1f} s, "
            f"loaded in {time.perf_counter() - start:.3f} s"
        )
    return 0


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with sub-commands ``list``, ``generate``, ``info`` and ``bench``."""
    data = subparsers.add_parser("data", help="long-range tasks: list, generate, inspect, benchmark")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    sub.add_parser("list", help="print every task's spec").set_defaults(func=_list)
    gen = sub.add_parser("generate", help="generate a task's splits (official layout where one exists)")
    gen.add_argument("task")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--size", type=int, default=None, help="examples per split (task default)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--splits", nargs="+", choices=["train", "dev", "test"], default=None)
    gen.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="task option, e.g. seq_len=256")
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in --out (without it, a split whose files exist there is refused)",
    )
    gen.set_defaults(func=_generate)
    info = sub.add_parser("info", help="describe generated files or cache entries under DIR")
    info.add_argument("dir")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="generation rates and cached load time")
    bench.add_argument("--listops", type=int, default=200, help="ListOps examples to generate")
    bench.add_argument("--pathfinder", type=int, default=512, help="Pathfinder-32 images (Pathfinder-128: half)")
    bench.add_argument(
        "--load-size", type=int, default=100_000, help="examples in the cached split whose load is timed"
    )
    bench.set_defaults(func=_bench)
