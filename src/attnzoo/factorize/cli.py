"""``attnzoo factorize``: PSF's non-parametric experiment on files or built-in matrices.

Every matrix is read (all of them before any optimisation, so a bad file fails at once), factorised with
:func:`attnzoo.factorize.chord_factorize` under a progress bar, and reported beside the truncated SVD of the
same budget in ``OUT/factorize.csv`` and ``OUT/factorize.md``; ``OUT/<matrix>.png`` shows A, the
approximation, the error and the factors' sparsity (skipped with a note when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from attnzoo.factorize.matrices import BUILTINS, DEFAULT_BUILTINS, Matrix, builtin_matrices, load_datalist, load_matrix
from attnzoo.factorize.optimize import OFFICIAL_MAX_ITER, OFFICIAL_TOL_FUN, OFFICIAL_TOL_X, FactorizeResult

__all__ = ["BUILTIN_MAX_ITER", "register_commands", "result_row"]

BUILTIN_MAX_ITER = 200  # the cap when only built-ins run and --max-iter is not given (minutes on a 2-core CPU)
COLUMNS = (
    "matrix", "category", "N", "M", "nnz", "sf_error", "sf_relative", "rank", "svd_error", "svd_relative",
    "iterations", "stopped", "seconds",
)  # fmt: skip


def result_row(matrix: Matrix, result: FactorizeResult) -> dict[str, Any]:
    """One table row: the matrix, ``N``, ``M``, factor nonzeros, SF and TSVD errors (absolute and relative
    to ``||A||_F``), the TSVD rank, iterations, why the optimiser stopped and its seconds."""
    scale = result.norm if result.norm > 0 else 1.0
    return {
        "matrix": matrix.name, "category": matrix.category, "N": matrix.data.shape[0], "M": len(result.factors),
        "nnz": result.nnz, "sf_error": result.error, "sf_relative": result.error / scale, "rank": result.rank,
        "svd_error": result.svd_error, "svd_relative": result.svd_error / scale, "iterations": result.iterations,
        "stopped": result.stopped, "seconds": result.seconds,
    }  # fmt: skip


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| matrix | category | N | M | factor nnz | SF error | SF rel. | TSVD rank | TSVD error | TSVD rel. "
        "| iterations | stopped | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['matrix']} | {r['category']} | {r['N']} | {r['M']} | {r['nnz']} | {r['sf_error']:.4g} | "
        f"{r['sf_relative']:.3e} | {r['rank']} | {r['svd_error']:.4g} | {r['svd_relative']:.3e} | {r['iterations']} | "
        f"{r['stopped']} | {r['seconds']:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _figure(matrix: Matrix, result: FactorizeResult, path: Path) -> None:
    from attnzoo.io import atomic_open
    from attnzoo.viz.plots import require_matplotlib

    plt = require_matplotlib()
    a = matrix.data.numpy()
    approx = result.approximation().cpu().numpy()
    mask = result.factors[0].to_dense().cpu().numpy() != 0
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    rel, svd_rel = result.error / max(result.norm, 1e-300), result.svd_error / max(result.norm, 1e-300)
    panels = (
        (a, f"A ({matrix.name}, N = {a.shape[0]})", "viridis"),
        (approx, f"W_1 ... W_{len(result.factors)}", "viridis"),
        (abs(a - approx), f"|error|: rel. {rel:.2e} (TSVD {svd_rel:.2e})", "magma"),
        (mask, f"factor sparsity: {int(mask.sum())} nonzeros each", "Greys"),
    )
    for ax, (image, title, cmap) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if cmap != "Greys":
            fig.colorbar(shown, ax=ax, fraction=0.046)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _matrices(args: argparse.Namespace) -> list[Matrix]:
    out: list[Matrix] = []
    for path in args.files:
        out += load_matrix(path, gradient=args.gradient)
    if args.datalist:
        out += load_datalist(args.datalist, args.root)
    if args.builtin is not None or not out:
        out += builtin_matrices(args.builtin or None)
    return out


def _slug(matrix: Matrix) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(matrix.name).stem}-{matrix.category}")


def _run(args: argparse.Namespace) -> int:
    from attnzoo.factorize.optimize import chord_factorize
    from attnzoo.io import atomic_write_text
    from attnzoo.progress import progress

    matrices = _matrices(args)
    only_builtins = not args.files and not args.datalist
    max_iter = (
        args.max_iter if args.max_iter is not None else (BUILTIN_MAX_ITER if only_builtins else OFFICIAL_MAX_ITER)
    )
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    figures = not args.no_figures
    for matrix in matrices:
        bar = progress(total=max_iter, desc=f"{matrix.name} ({matrix.category})", force=args.progress)
        with bar:

            def report(
                iteration: int, objective: float, bar: Any = bar, norm: float = float(matrix.data.norm())
            ) -> None:
                bar.update(1)
                bar.set_postfix(rel_error=f"{math.sqrt(2 * objective) / max(norm, 1e-300):.3e}", refresh=False)

            result = chord_factorize(
                matrix.data, base=args.base, symmetric=args.symmetric, self_loops=not args.no_self,
                random_order=args.random_order, max_iter=max_iter, tol=args.tol_x, tol_fun=args.tol_fun,
                device=args.device, callback=report,
            )  # fmt: skip
        row = result_row(matrix, result)
        rows.append(row)
        print(
            f"{matrix.name} ({matrix.category}): N={row['N']} M={row['M']} nnz={row['nnz']} "
            f"SF rel. error {row['sf_relative']:.3e}, TSVD rank {row['rank']} rel. error {row['svd_relative']:.3e}; "
            f"{row['iterations']} iterations, stopped: {row['stopped']}, {row['seconds']:.1f} s"
        )
        atomic_write_text(out / "factorize.csv", _csv(rows))
        atomic_write_text(out / "factorize.md", _markdown(rows))
        if figures:
            try:
                _figure(matrix, result, out / f"{_slug(matrix)}.png")
            except ImportError as err:
                print(f"figures skipped: {err}")
                figures = False
    print(f"wrote {out / 'factorize.csv'} and {out / 'factorize.md'}")
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo factorize`` to the CLI."""
    parser = subparsers.add_parser(
        "factorize",
        help="approximate square matrices by chord-sparse factors against truncated SVD (PSF's non-parametric test)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help=".mtx, .mat (variable A), .npy, .pt or an image")
    parser.add_argument(
        "--builtin", nargs="*", default=None, metavar="NAME",
        help=f"run built-in matrices (default when no FILE: {', '.join(DEFAULT_BUILTINS)}); all: {', '.join(BUILTINS)}",
    )  # fmt: skip
    parser.add_argument("--datalist", default=None, help="the official datalist.csv (rows filename,category)")
    parser.add_argument(
        "--root", default=None, help="folder of the official matrices (default: square_matrices beside --datalist)"
    )
    parser.add_argument("--gradient", action="store_true", help="also factorise each image's gradient image")
    parser.add_argument(
        "--max-iter", type=int, default=None,
        help=f"iteration cap (default {OFFICIAL_MAX_ITER}, the official MaxIter; "
        f"{BUILTIN_MAX_ITER} when only built-ins run)",
    )  # fmt: skip
    parser.add_argument("--tol-x", type=float, default=OFFICIAL_TOL_X, help="relative step tolerance (official TolX)")
    parser.add_argument("--tol-fun", type=float, default=OFFICIAL_TOL_FUN, help="relative optimality tolerance")
    parser.add_argument("--base", type=int, default=2, help="chord base b (official: 2)")
    parser.add_argument("--symmetric", action="store_true", help="chord mask with the offsets -b^k too")
    parser.add_argument("--no-self", action="store_true", help="chord mask without the diagonal")
    parser.add_argument("--random-order", action="store_true", help="chord columns through MATLAB's randperm(N)")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument("--out", default="runs/factorize", help="output folder (default runs/factorize)")
    parser.add_argument("--no-figures", action="store_true", help="skip the per-matrix figures")
    parser.add_argument(
        "--progress", action="store_true", help="draw the progress bar even when stderr is not a terminal"
    )
    parser.set_defaults(func=_run)
