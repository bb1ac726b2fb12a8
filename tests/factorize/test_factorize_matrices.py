"""Readers of ``attnzoo factorize`` (the official loader's formats), bad files, images and the built-ins."""

import struct

import numpy as np
import pytest
import torch

from attnzoo.factorize.matrices import (
    BUILTINS,
    builtin_matrices,
    gradient_image,
    load_datalist,
    load_matrix,
    read_matrix_market,
    rgb2gray,
)
from attnzoo.tasks.png import write_png_gray


def write(path, text):
    path.write_text(text)
    return path


def test_matrix_market_coordinate_array_symmetric_pattern(tmp_path):
    general = write(
        tmp_path / "g.mtx", "%%MatrixMarket matrix coordinate real general\n% c\n3 3 3\n1 1 2.5\n3 1 -1\n2 3 4\n"
    )
    np.testing.assert_array_equal(read_matrix_market(general), [[2.5, 0, 0], [0, 0, 4], [-1, 0, 0]])
    sym = write(tmp_path / "s.mtx", "%%MatrixMarket matrix coordinate integer symmetric\n2 2 2\n1 1 1\n2 1 7\n")
    np.testing.assert_array_equal(read_matrix_market(sym), [[1, 7], [7, 0]])
    pattern = write(tmp_path / "p.mtx", "%%MatrixMarket matrix coordinate pattern skew-symmetric\n2 2 1\n2 1\n")
    np.testing.assert_array_equal(read_matrix_market(pattern), [[0, -1], [1, 0]])
    array = write(tmp_path / "a.mtx", "%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n")
    np.testing.assert_array_equal(read_matrix_market(array), [[1, 3], [2, 4]])  # column-major
    sym_array = write(tmp_path / "sa.mtx", "%%MatrixMarket matrix array real symmetric\n2 2\n1\n2\n3\n")
    np.testing.assert_array_equal(read_matrix_market(sym_array), [[1, 2], [2, 3]])
    scipy_io = pytest.importorskip("scipy.io")
    for path in (general, sym, pattern, array, sym_array):
        theirs = scipy_io.mmread(path)
        np.testing.assert_array_equal(
            read_matrix_market(path), theirs.toarray() if hasattr(theirs, "toarray") else theirs
        )


def test_bad_files_give_one_error_naming_the_file(tmp_path):
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"rect\.npy: not a square matrix \(shape \(3, 4\)\)"):
        load_matrix(tmp_path / "rect.npy")
    nan = np.eye(4)
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"nan\.npy: 1 NaN or infinite entries"):
        load_matrix(tmp_path / "nan.npy")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"broken\.png: "):
        load_matrix(tmp_path / "broken.png")
    torch.save({"B": torch.eye(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong\.pt: the dict holds no key 'A' \(keys: \['B'\]\)"):
        load_matrix(tmp_path / "wrong.pt")
    write(tmp_path / "m.txt", "1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"m\.txt: unknown file type '\.txt'"):
        load_matrix(tmp_path / "m.txt")
    bad_mtx = write(tmp_path / "c.mtx", "%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 1 0\n")
    with pytest.raises(ValueError, match=r"c\.mtx: unsupported Matrix Market format coordinate complex"):
        load_matrix(bad_mtx)
    with pytest.raises(FileNotFoundError, match=r"missing\.npy: no such file"):
        load_matrix(tmp_path / "missing.npy")


def test_mat_files_variable_a_wrong_name_and_v73(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_sparse = pytest.importorskip("scipy.sparse")
    scipy_io.savemat(tmp_path / "ok.mat", {"A": scipy_sparse.csr_matrix(np.arange(9.0).reshape(3, 3))})
    (matrix,) = load_matrix(tmp_path / "ok.mat")
    torch.testing.assert_close(matrix.data, torch.arange(9.0, dtype=torch.float64).reshape(3, 3))
    scipy_io.savemat(tmp_path / "other.mat", {"X": np.eye(3)})
    with pytest.raises(
        ValueError, match=r"other\.mat: no variable 'A' \(the official loader's name\); the file holds \['X'\]"
    ):
        load_matrix(tmp_path / "other.mat")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0200) + b"IM"
    (tmp_path / "v73.mat").write_bytes(header + b"\0" * 512)
    with pytest.raises(ValueError, match=r"v73\.mat: MATLAB v7\.3 \(HDF5\) files are not supported"):
        load_matrix(tmp_path / "v73.mat")


def test_rgb2gray_and_colour_images(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    # MATLAB: 0.2989 * 255 = 76.2, 0.5870 * 255 = 149.7, 0.1140 * 255 = 29.07, 2.989 + 11.74 + 3.42 = 18.15
    np.testing.assert_array_equal(rgb2gray(pixels), [[76, 150], [29, 18]])
    image = pytest.importorskip("PIL.Image")
    image.fromarray(pixels).save(tmp_path / "rgb.png")
    (matrix,) = load_matrix(tmp_path / "rgb.png")
    torch.testing.assert_close(matrix.data, torch.tensor([[76.0, 150.0], [29.0, 18.0]], dtype=torch.float64))


def test_grey_png_and_gradient_variant(tmp_path):
    ramp = np.tile(np.arange(0, 80, 10, dtype=np.uint8), (8, 1))  # x ramp, slope 10
    write_png_gray(tmp_path / "ramp.png", ramp)
    image, grad = load_matrix(tmp_path / "ramp.png", gradient=True)
    assert (image.category, grad.category) == ("square_image", "gradient_image")
    torch.testing.assert_close(image.data, torch.from_numpy(ramp).double())
    expected = torch.full((8, 8), 80.0, dtype=torch.float64)  # Sobel: (1 + 2 + 1) * (2 * slope)
    expected[:, 0] = expected[:, -1] = 40.0  # replicated borders: one-sided difference
    torch.testing.assert_close(grad.data, expected)
    assert float(gradient_image(np.full((5, 5), 7.0)).abs().max()) == 0.0


def test_datalist_reads_the_official_layout(tmp_path):
    root = tmp_path / "square_matrices"
    (root / "square_image").mkdir(parents=True)
    (root / "gradient_image").mkdir()
    write_png_gray(root / "square_image" / "x.png", np.eye(4, dtype=np.uint8) * 9)
    write_png_gray(root / "gradient_image" / "x.png", np.ones((4, 4), dtype=np.uint8))
    csv = write(tmp_path / "datalist.csv", "x.png,square_image\nx.png,gradient_image\n")
    first, second = load_datalist(csv)
    assert (first.category, second.category) == ("square_image", "gradient_image")
    torch.testing.assert_close(first.data, 9 * torch.eye(4, dtype=torch.float64))
    write(tmp_path / "bad.csv", "y.png,poster\n")
    with pytest.raises(ValueError, match=r"bad\.csv: unknown category 'poster' for 'y\.png'"):
        load_datalist(tmp_path / "bad.csv")


def test_builtins_have_the_promised_structure():
    with pytest.raises(ValueError, match="unknown built-in matrix 'nope'"):
        builtin_matrices(["nope"])
    graph = BUILTINS["geometric-graph-512"][1]()
    assert graph.shape == (512, 512) and torch.equal(graph, graph.T) and float(graph.diagonal().abs().sum()) == 0
    assert set(graph.unique().tolist()) == {0.0, 1.0}
    (cov,) = builtin_matrices(["digits-covariance-64"])
    assert cov.data.shape == (64, 64) and torch.allclose(cov.data, cov.data.T)
    assert float(torch.linalg.eigvalsh(cov.data).min()) > -1e-9
    image = BUILTINS["smooth-image-256"][1]()
    assert (float(image.min()), float(image.max())) == (0.0, 255.0)
