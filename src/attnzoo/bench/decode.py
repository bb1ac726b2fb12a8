"""``attnzoo bench-decode``: time per decoded token and decoding-state size against the context length.

For each mechanism and context length L a causal module (``attnzoo.build(..., causal=True)``, eval, no
gradients) prefills L random tokens, takes ``WARMUP`` untimed steps, then ``steps`` timed steps, each
timed alone (``time.perf_counter``, CUDA synchronised); reported: the median and minimum ms per token
(the whole ``module.step``: qkv projection, attention, output projection) and the state's bytes after
the last step. Mechanisms with a bounded state (performer, linear, local, dilated) should be flat in
L; softmax's KV cache, and the per-token time with it, grows linearly; causal EVA's state grows by
one chunk summary every r tokens (O(w + L / r)).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from typing import Any

import torch

from attnzoo.cli import positive_int

__all__ = ["DEFAULT_CONTEXTS", "DEFAULT_MECHANISMS", "format_table", "register_decode_command", "time_decoding"]

DEFAULT_MECHANISMS = ("softmax", "performer", "linear", "local", "dilated", "causal_eva")
DEFAULT_CONTEXTS = (256, 1024, 4096, 16384)
WARMUP = 2


def time_decoding(
    mechanism: str,
    options: dict[str, Any],
    context: int,
    *,
    steps: int = 32,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Prefill ``context`` tokens, then time ``steps`` decoding steps of one mechanism.

    Returns:
        A record: ``mechanism, context, steps, ms_per_token`` (median), ``ms_min``, ``state_bytes``,
        ``status`` (``"ok"``, or ``"n/a: <why>"`` when the mechanism cannot decode with these options).
    """
    import attnzoo

    record: dict[str, Any] = {"mechanism": mechanism, "context": context, "steps": steps, "options": options}
    record.update(batch=batch, heads=heads, head_dim=head_dim, dtype=str(dtype).removeprefix("torch."))
    torch.manual_seed(seed)
    dim = heads * head_dim
    module = attnzoo.build(mechanism, dim, heads, causal=True, **options).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, context + WARMUP + steps, dim, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        try:
            _, state = module.prefill(x[:, :context])
        except (TypeError, ValueError) as err:
            return {**record, "status": f"n/a: {err}"}
        for t in range(context, context + WARMUP + steps):
            sync()
            start = time.perf_counter()
            _, state = module.step(x[:, t : t + 1], state)
            sync()
            if t >= context + WARMUP:
                times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3 if times else float("nan")
    ms_min = min(times) * 1e3 if times else float("nan")
    return {**record, "status": "ok", "ms_per_token": ms, "ms_min": ms_min, "state_bytes": state.memory_bytes()}


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown table: a row per mechanism, a column per context (``ms/token, state bytes``), and the
    ratio of the per-token time at the longest context to the shortest."""
    contexts = sorted({r["context"] for r in records})
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in records))
    lines = [
        "| mechanism | " + " | ".join(f"L={c}" for c in contexts) + " | longest / shortest |",
        "|---|" + "---:|" * (len(contexts) + 1),
    ]
    for mech in mechanisms:
        found = {r["context"]: r for r in records if r["mechanism"] == mech}
        cells, ok = [], [found[c] for c in contexts if c in found and found[c]["status"] == "ok"]
        for c in contexts:
            r = found.get(c)
            if r is None:
                cells.append("-")
            elif r["status"] != "ok":
                cells.append(r["status"].split(":")[0])
            else:
                cells.append(f"{r['ms_per_token']:.3f} ms, {_bytes(r['state_bytes'])}")
        ratio = f"{ok[-1]['ms_per_token'] / ok[0]['ms_per_token']:.2f}x" if len(ok) > 1 else "-"
        lines.append(f"| {mech} | " + " | ".join(cells) + f" | {ratio} |")
    notes = sorted({f"- {r['mechanism']}: {r['status']}" for r in records if r["status"] != "ok"})
    return "\n".join(lines + (["", *notes] if notes else []))


def _command(args: argparse.Namespace) -> str:
    """The explicit command line that reruns this measurement."""
    argv = ["attnzoo", "bench-decode", "--mechanisms", *args.mechanisms, "--contexts", *map(str, args.contexts)]
    for flag in ("steps", "batch", "heads", "head_dim", "dtype", "device"):
        argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return shlex.join(argv + [f"--option={pair}" for pair in args.option])


def _run(args: argparse.Namespace) -> int:
    from attnzoo.bench.cli import _parse_options
    from attnzoo.bench.run import environment
    from attnzoo.bench.settings import bench_options

    if args.steps < 1 or min(args.contexts) < 0:
        raise ValueError(f"--steps must be >= 1 and --contexts >= 0, got {args.steps} and {args.contexts}")
    overrides = _parse_options(args.option)
    dtype = getattr(torch, args.dtype)
    records = []
    for mech in args.mechanisms:
        options = bench_options(mech, overrides.get(mech))
        for context in args.contexts:
            record = time_decoding(
                mech,
                options,
                context,
                steps=args.steps,
                batch=args.batch,
                heads=args.heads,
                head_dim=args.head_dim,
                dtype=dtype,
                device=args.device,
            )
            print(f"  {mech:>10} L={context:>6}: {record['status']} {record.get('ms_per_token', '')}", file=sys.stderr)
            records.append(record)
    env = environment()
    print(f"# attnzoo bench-decode: {env}\n# {_command(args)}\n")
    print(format_table(records))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps({**r, "env": env}, sort_keys=True, default=str) + "\n" for r in records)
    return 0


def register_decode_command(subparsers: Any) -> None:
    """Add ``attnzoo bench-decode`` to the CLI."""
    p = subparsers.add_parser("bench-decode", help="time per decoded token and state size vs context length")
    p.add_argument("--mechanisms", nargs="+", default=list(DEFAULT_MECHANISMS), metavar="NAME")
    p.add_argument("--contexts", nargs="+", type=positive_int, default=list(DEFAULT_CONTEXTS), metavar="L")
    p.add_argument("--steps", type=positive_int, default=32, help="timed steps after each prefill (default 32)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--option", action="append", default=[], metavar="MECH.NAME=VALUE", help="as attnzoo bench")
    p.add_argument("--out", help="append JSON-lines records to this file")
    p.set_defaults(func=_run)
