"""Short sequences against softmax (SDPA), measured in pairs: each mechanism's time over softmax's.

Usage: python3 scripts/short_sequences.py [--lengths 128 256 512 1024] [--batches 1 4] [--rounds 5]

``attnzoo bench`` times one case after another; on a shared or virtualised CPU two measurements of the same
sub-millisecond call taken a minute apart differ by up to 2x, which hides a 10% difference. Here softmax and
each mechanism (``local``, ``dilated``, ``butterfly`` with the benchmark settings) are timed in alternation in
one process: ``--rounds`` rounds, each one block of at least 0.2 s per implementation; the ratio is of the
medians over rounds. Paths: ``functional`` (``module.attend(q, k, v, None)`` on ``(B, H, N, d)``) and ``module``
(``module(x)`` on ``(B, N, H d)``, projections included; every module holds softmax's projection weights).
B x 8 heads x d 64, fp32, forward (no grad) and forward+backward. Prints one Markdown row per setting.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import attnzoo
from attnzoo.bench.settings import bench_options

HEADS, HEAD_DIM = 8, 64
MECHANISMS = ("local", "dilated", "butterfly")


def _block(fn: Callable[[], None], seconds: float) -> float:
    """Mean seconds per call over a block of at least ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def _call(module: torch.nn.Module, path: str, batch: int, n: int, backward: bool) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    if path == "functional":
        inputs = [torch.randn(batch, HEADS, n, HEAD_DIM, generator=gen).requires_grad_(backward) for _ in range(3)]

        def run() -> torch.Tensor:
            return module.attend(*inputs, None)  # type: ignore[operator]
    else:
        inputs = [torch.randn(batch, n, HEADS * HEAD_DIM, generator=gen).requires_grad_(backward)]

        def run() -> torch.Tensor:
            return module(inputs[0])

    if not backward:

        def forward() -> None:
            with torch.no_grad():
                run()

        return forward
    grad = torch.randn(batch, n, HEADS * HEAD_DIM) if path == "module" else torch.randn(batch, HEADS, n, HEAD_DIM)

    def forward_backward() -> None:
        run().backward(grad)

    return forward_backward


def main() -> None:
    """Print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=0.2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B x {HEADS} heads x d {HEAD_DIM}, fp32")
    print("| causal | B | N | pass | path | softmax ms | " + " | ".join(f"{m} / softmax" for m in MECHANISMS) + " |")
    print("|---|---:|---:|---|---|---:|" + "---:|" * len(MECHANISMS))
    for causal in (False, True):
        for batch in args.batches:
            for n in args.lengths:
                for backward in (False, True):
                    for path in ("functional", "module"):
                        softmax = attnzoo.build("softmax", HEADS * HEAD_DIM, HEADS, causal=causal)
                        fns = {"softmax": _call(softmax, path, batch, n, backward)}
                        for name in MECHANISMS:
                            module = attnzoo.build(name, HEADS * HEAD_DIM, HEADS, causal=causal, **bench_options(name))
                            module.load_state_dict(softmax.state_dict(), strict=False)
                            fns[name] = _call(module, path, batch, n, backward)
                        times: dict[str, list[float]] = {name: [] for name in fns}
                        for fn in fns.values():
                            fn()
                        for _ in range(args.rounds):
                            for name, fn in fns.items():
                                times[name].append(_block(fn, args.block_s))
                        base = statistics.median(times["softmax"])
                        ratios = " | ".join(f"{statistics.median(times[m]) / base:.2f}" for m in MECHANISMS)
                        pass_name = "fwdbwd" if backward else "fwd"
                        print(
                            f"| {'yes' if causal else 'no'} | {batch} | {n} | {pass_name} | {path} | "
                            f"{1e3 * base:.3f} | {ratios} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
