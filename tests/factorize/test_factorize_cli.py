"""``attnzoo factorize`` end to end: files, a built-in, the table, the figures and bad files."""

import csv

import numpy as np
import pytest

from attnzoo.cli import main
from attnzoo.factorize.cli import COLUMNS


def test_factorize_file_writes_table_and_figure(tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.arange(64.0).reshape(8, 8) % 5)
    out = tmp_path / "out"
    assert main(["factorize", str(tmp_path / "small.npy"), "--max-iter", "4", "--out", str(out)]) == 0
    (row,) = list(csv.DictReader((out / "factorize.csv").open()))
    assert tuple(row) == COLUMNS
    assert (row["matrix"], row["category"], row["N"], row["M"], row["rank"]) == ("small.npy", "matrix", "8", "3", "5")
    assert row["nnz"] == str(3 * 8 * 4)  # 3 factors, 4 nonzeros per row (offsets 1, 2, 4 and the diagonal)
    assert row["stopped"] in ("max_iter", "step_tolerance", "optimality_tolerance") and int(row["iterations"]) <= 4
    norm = float(np.linalg.norm(np.arange(64.0).reshape(8, 8) % 5))
    assert float(row["sf_relative"]) == pytest.approx(float(row["sf_error"]) / norm, rel=1e-6)
    assert float(row["svd_relative"]) == pytest.approx(float(row["svd_error"]) / norm, rel=1e-6)
    assert "| small.npy | matrix | 8 | 3 | 96 |" in (out / "factorize.md").read_text()
    assert "small.npy (matrix): N=8 M=3 nnz=96" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert (out / "small-matrix.png").read_bytes().startswith(b"\x89PNG")


def test_factorize_builtin(tmp_path):
    out = tmp_path / "out"
    argv = ["factorize", "--builtin", "digits-covariance-64", "--max-iter", "2", "--no-figures", "--out", str(out)]
    assert main(argv) == 0
    (row,) = list(csv.DictReader((out / "factorize.csv").open()))
    assert (row["matrix"], row["category"], row["N"], row["M"], row["rank"]) == (
        "digits-covariance-64",
        "covariance_matrix",
        "64",
        "6",
        "18",
    )
    assert (row["iterations"], row["stopped"]) == ("2", "max_iter")
    assert float(row["sf_error"]) > 0 and 0 < float(row["svd_relative"]) < 1
    assert not list(out.glob("*.png"))


def test_bad_file_is_one_clear_error(tmp_path, capsys):
    np.save(tmp_path / "rect.npy", np.ones((2, 3)))
    assert main(["factorize", str(tmp_path / "rect.npy"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"attnzoo factorize: error: {tmp_path / 'rect.npy'}: not a square matrix (shape (2, 3))"
    assert not (tmp_path / "out").exists()


def test_factorize_official_datalist_layout(tmp_path):
    from attnzoo.tasks.png import write_png_gray

    root = tmp_path / "square_matrices" / "square_image"
    root.mkdir(parents=True)
    write_png_gray(root / "tiny.png", (np.arange(16, dtype=np.uint8).reshape(4, 4) * 7) % 23)
    (tmp_path / "datalist.csv").write_text("tiny.png,square_image\n")
    out = tmp_path / "out"
    argv = ["factorize", "--datalist", str(tmp_path / "datalist.csv"), "--max-iter", "3", "--no-figures"]
    assert main([*argv, "--out", str(out)]) == 0
    (row,) = list(csv.DictReader((out / "factorize.csv").open()))
    assert (row["matrix"], row["category"], row["N"], row["M"], row["rank"]) == (
        "tiny.png",
        "square_image",
        "4",
        "2",
        "2",
    )
