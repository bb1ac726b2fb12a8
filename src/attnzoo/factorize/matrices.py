"""Square matrices for ``attnzoo factorize``: file readers (the official loader's formats) and built-ins.

Readers (every error names the file):

- ``.mtx`` Matrix Market, coordinate or array, real/integer/pattern, general/symmetric/skew-symmetric
  (a small reader of our own: no SciPy needed);
- ``.mat`` MATLAB (v4-v7.2, through ``scipy.io.loadmat``, the optional extra ``attnzoo[factorize]``): the
  variable ``A``, dense or sparse, as the official ``load_square_matrix.m``; v7.3 (HDF5) files are refused;
- ``.npy`` (numpy) and ``.pt`` (a tensor, or a dict holding ``"A"``);
- images (``.png``, ``.jpg``, ``.bmp``, ``.tif``, ...): through Pillow when installed, colour converted as
  MATLAB's ``rgb2gray`` (then rounded to the integer type); without Pillow, 8-bit grey PNGs only.

The official ``gradient_image`` category holds images precomputed in ``square_matrices.zip``; for any other
image, :func:`gradient_image` gives the Sobel gradient magnitude (MATLAB ``imgradient``'s default method,
replicated borders).

Built-ins (:data:`BUILTINS`), procedurally generated from fixed seeds, one per official category kind:
a smooth image and its gradient, a random geometric graph and the covariance of a handwritten-digit-like
data set (8 x 8 renderings of seven-segment digits, as ``optdigits`` counts pixels of 32 x 32 bitmaps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BUILTINS",
    "DEFAULT_BUILTINS",
    "IMAGE_SUFFIXES",
    "Matrix",
    "builtin_matrices",
    "covariance_of_digits",
    "gradient_image",
    "load_datalist",
    "load_matrix",
    "random_geometric_graph",
    "read_image",
    "read_matrix_market",
    "rgb2gray",
    "smooth_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")
# MATLAB's rgb2gray takes the first row of the inverse of rgb2ntsc's matrix: 0.2989 R + 0.5870 G + 0.1140 B
_NTSC = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
_GRAY = np.linalg.inv(_NTSC)[0]


@dataclasses.dataclass(frozen=True)
class Matrix:
    """A named square matrix: ``data (N, N)`` float64 and its category (the official ``datalist.csv`` names)."""

    name: str
    category: str
    data: torch.Tensor


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _square(path: Path, data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``data`` as a finite square float64 tensor, or a ValueError naming ``path``."""
    tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.array(data))
    if tensor.is_complex():
        raise _fail(path, "complex matrices are not supported")
    if tensor.dim() != 2 or tensor.shape[0] != tensor.shape[1]:
        raise _fail(path, f"not a square matrix (shape {tuple(tensor.shape)})")
    if tensor.shape[0] < 2:
        raise _fail(path, f"the matrix must be at least 2 x 2, got {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise _fail(path, f"{bad} NaN or infinite entries")
    return tensor


def read_matrix_market(path: str | Path) -> np.ndarray:
    """A Matrix Market file as a dense float64 ``(rows, cols)`` array.

    Raises:
        ValueError: naming the file, for a bad header, an unsupported field/symmetry or malformed entries.
    """
    path = Path(path)
    with path.open("r", encoding="ascii", errors="replace") as handle:
        header = handle.readline().split()
        if len(header) != 5 or header[0].lower() != "%%matrixmarket" or header[1].lower() != "matrix":
            raise _fail(path, "not a Matrix Market file (expected '%%MatrixMarket matrix ...' on the first line)")
        layout, field, symmetry = (h.lower() for h in header[2:])
        if layout not in ("coordinate", "array") or field not in ("real", "integer", "pattern", "double"):
            raise _fail(path, f"unsupported Matrix Market format {layout} {field} (real, integer or pattern only)")
        if symmetry not in ("general", "symmetric", "skew-symmetric"):
            raise _fail(path, f"unsupported Matrix Market symmetry {symmetry!r}")
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("%")]
    try:
        size = [int(v) for v in lines[0].split()]
        body = np.array([float(v) for line in lines[1:] for v in line.split()], dtype=np.float64)
    except (IndexError, ValueError) as err:
        raise _fail(path, f"malformed Matrix Market data ({err})") from None
    rows, cols = size[0], size[1]
    if layout == "array":
        if len(size) != 2 or body.size != (rows * cols if symmetry == "general" else _triangle(rows, symmetry)):
            raise _fail(path, f"array data holds {body.size} values, which does not fit {rows} x {cols} ({symmetry})")
        if symmetry == "general":
            return body.reshape(cols, rows).T.copy()  # column-major
        lower = np.tril_indices(rows, 0 if symmetry == "symmetric" else -1)
        order = np.lexsort((lower[0], lower[1]))  # column by column
        i, j, v = lower[0][order], lower[1][order], body
    else:
        per = 2 if field == "pattern" else 3
        if len(size) != 3 or body.size != size[2] * per:
            raise _fail(path, f"coordinate data holds {body.size} numbers, expected {per} per entry for {size[-1]}")
        table = body.reshape(-1, per)
        i, j = table[:, 0].astype(np.int64) - 1, table[:, 1].astype(np.int64) - 1
        v = np.ones(len(table)) if field == "pattern" else table[:, 2]
        if len(i) and (i.min() < 0 or j.min() < 0 or i.max() >= rows or j.max() >= cols):
            raise _fail(path, f"an entry index lies outside the {rows} x {cols} matrix")
    out = np.zeros((rows, cols), dtype=np.float64)
    np.add.at(out, (i, j), v)
    off = i != j
    if symmetry != "general":
        np.add.at(out, (j[off], i[off]), v[off] if symmetry == "symmetric" else -v[off])
    return out


def _triangle(n: int, symmetry: str) -> int:
    return n * (n + 1) // 2 if symmetry == "symmetric" else n * (n - 1) // 2


def _read_mat(path: Path) -> np.ndarray:
    try:
        import scipy.io
    except ImportError:
        raise _fail(path, "reading .mat files needs SciPy: pip install 'attnzoo[factorize]'") from None
    try:
        names = [name for name, _, _ in scipy.io.whosmat(path)]
        if "A" not in names:
            raise _fail(path, f"no variable 'A' (the official loader's name); the file holds {names}")
        value = scipy.io.loadmat(path, variable_names=["A"])["A"]
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 files
        raise _fail(path, "MATLAB v7.3 (HDF5) files are not supported; re-save it with save(..., '-v7')") from None
    except (OSError, ValueError, TypeError) as err:
        if str(err).startswith(str(path)):
            raise
        raise _fail(path, f"cannot read the MATLAB file ({err})") from None
    return value.toarray() if hasattr(value, "toarray") else value


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2gray`` of an ``(H, W, 3)`` array: ``(H, W)``, rounded and of the input's integer type
    (float input stays float)."""
    gray = rgb[..., :3].astype(np.float64) @ _GRAY
    if np.issubdtype(rgb.dtype, np.integer):
        info = np.iinfo(rgb.dtype)
        return np.clip(np.round(gray), info.min, info.max).astype(rgb.dtype)
    return gray


def read_image(path: str | Path) -> np.ndarray:
    """A grey image as MATLAB's ``imread`` (+ ``rgb2gray`` for colour) gives it: ``(H, W)`` integer array.

    Raises:
        ValueError: naming the file, when it cannot be decoded.
    """
    path = Path(path)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        from attnzoo.tasks.png import read_png_gray

        if path.suffix.lower() != ".png":
            raise _fail(path, "reading non-PNG images needs Pillow (pip install pillow)") from None
        return read_png_gray(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA"):
                return rgb2gray(np.asarray(img.convert("RGB")))
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise _fail(path, f"cannot decode the image ({type(err).__name__}: {err})") from None


def gradient_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``sqrt(Gx^2 + Gy^2)`` of a 2-D image with replicated borders: ``(H, W)`` float64."""
    x = image.to(torch.float64) if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, np.float64))
    p = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    smooth_rows = p[:-2] + 2 * p[1:-1] + p[2:]  # (H, W + 2)
    smooth_cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # (H + 2, W)
    gx = smooth_rows[:, 2:] - smooth_rows[:, :-2]
    gy = smooth_cols[2:] - smooth_cols[:-2]
    return torch.sqrt(gx.square() + gy.square())


def load_matrix(path: str | Path, *, gradient: bool = False) -> list[Matrix]:
    """The matrices of one file: ``[Matrix]``, plus its gradient image when ``gradient`` and it is an image.

    Raises:
        ValueError: naming the file: unknown suffix, unreadable content, not square, NaN/inf, no ``A``.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        image = read_image(path)
        out = [Matrix(path.name, "square_image", _square(path, image))]
        if gradient:
            out.append(Matrix(path.name, "gradient_image", _square(path, gradient_image(image))))
        return out
    if suffix == ".mtx":
        data: np.ndarray | torch.Tensor = read_matrix_market(path)
    elif suffix == ".mat":
        data = _read_mat(path)
    elif suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise _fail(path, f"cannot read the .npy file ({err})") from None
    elif suffix == ".pt":
        data = _read_pt(path)
    else:
        raise _fail(path, f"unknown file type {suffix!r} (expected .mtx, .mat, .npy, .pt or an image)")
    return [Matrix(path.name, "matrix", _square(path, data))]


def _read_pt(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise _fail(path, f"cannot read the .pt file ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict):
        if "A" not in obj:
            raise _fail(path, f"the dict holds no key 'A' (keys: {sorted(map(str, obj))})")
        obj = obj["A"]
    if not isinstance(obj, torch.Tensor):
        raise _fail(path, f"expected a tensor or a dict with a tensor 'A', got {type(obj).__name__}")
    return obj.to_dense() if obj.is_sparse else obj


def load_datalist(csv: str | Path, root: str | Path | None = None) -> list[Matrix]:
    """The official list: ``datalist.csv`` rows ``filename,category``, read from ``ROOT/<category>/<filename>``
    as ``load_square_matrix.m`` does (``root`` default: ``square_matrices`` beside the CSV).

    Raises:
        ValueError: an unknown category or a bad file (naming it).
    """
    csv = Path(csv)
    root = Path(root) if root is not None else csv.parent / "square_matrices"
    out = []
    for line in csv.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        filename, _, category = (s.strip() for s in line.partition(","))
        if category in ("square_image", "gradient_image"):
            path = root / category / filename
            out.append(Matrix(filename, category, _square(path, read_image(path))))
        elif category in ("dense_graph", "network", "surface_mesh", "covariance_matrix"):
            path = root / category / filename
            out.append(Matrix(filename, category, _square(path, _read_mat(path))))
        else:
            raise ValueError(f"{csv}: unknown category {category!r} for {filename!r}")
    return out


def smooth_image(n: int, seed: int = 0) -> torch.Tensor:
    """A smooth grey ``(n, n)`` image in ``[0, 255]``: a few Gaussian blobs on a slanted ramp with soft stripes."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    img = 0.35 * (x + 0.5 * y) + 0.1 * np.sin(2 * np.pi * (3 * x + 2 * y))
    for cx, cy, width, height in zip(rng.rand(8), rng.rand(8), 0.05 + 0.15 * rng.rand(8), rng.randn(8), strict=True):
        img += 0.4 * height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(np.round(255 * img))


def random_geometric_graph(n: int, radius: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Adjacency ``(n, n)`` of ``n`` uniform points in the unit square joined within ``radius`` (no self loops)."""
    points = torch.from_numpy(np.random.RandomState(seed).rand(n, 2))
    adjacency = (torch.cdist(points, points) < radius).to(torch.float64)
    return adjacency.fill_diagonal_(0.0)


# seven-segment digits: segments a (top), b (top right), c (bottom right), d (bottom), e (bottom left),
# f (top left), g (middle)
_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
_ENDS = {"a": (0, 0, 0, 1), "b": (0, 1, 1, 1), "c": (1, 1, 2, 1), "d": (2, 0, 2, 1), "e": (1, 0, 2, 0),
         "f": (0, 0, 1, 0), "g": (1, 0, 1, 1)}  # fmt: skip


def covariance_of_digits(samples: int = 1797, seed: int = 0) -> torch.Tensor:
    """Covariance ``(64, 64)`` of a handwritten-digit-like data set: each sample is a seven-segment digit
    drawn with a random slant, size, offset and stroke width on a 32 x 32 bitmap, then counted in 4 x 4
    blocks (values 0..16), as ``optdigits`` is made; ``samples`` rows (scikit-learn's digits has 1797)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    data = np.empty((samples, 64))
    for s in range(samples):
        digit = _SEGMENTS[s % 10]
        width, height = rng.uniform(9, 14), rng.uniform(10, 13)
        left, top, slant = rng.uniform(6, 22 - width), rng.uniform(3, 29 - 2 * height), rng.uniform(-0.3, 0.3)
        stroke = rng.uniform(1.2, 2.4)
        bitmap = np.zeros((32, 32), dtype=bool)
        for segment in digit:
            r0, c0, r1, c1 = _ENDS[segment]
            y0, y1 = top + height * r0, top + height * r1
            x0, x1 = (
                left + width * c0 + slant * (top + 2 * height - y0),
                left + width * c1 + slant * (top + 2 * height - y1),
            )
            dy, dx = y1 - y0, x1 - x0  # distance of every pixel centre to the segment (y0, x0) - (y1, x1)
            t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
            bitmap |= (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 < stroke**2
        data[s] = bitmap.reshape(8, 4, 8, 4).sum((1, 3)).reshape(-1)
    return torch.from_numpy(np.cov(data, rowvar=False))


BUILTINS: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {
    "smooth-image-256": ("square_image", lambda: smooth_image(256)),
    "smooth-image-gradient-256": ("gradient_image", lambda: gradient_image(smooth_image(256))),
    "geometric-graph-512": ("dense_graph", lambda: random_geometric_graph(512)),
    "digits-covariance-64": ("covariance_matrix", covariance_of_digits),
    "smooth-image-1024": ("square_image", lambda: smooth_image(1024)),
}
DEFAULT_BUILTINS = ("digits-covariance-64", "smooth-image-256", "smooth-image-gradient-256", "geometric-graph-512")


def builtin_matrices(names: list[str] | None = None) -> list[Matrix]:
    """The built-in matrices (those named, default :data:`DEFAULT_BUILTINS`), generated on the fly.

    Raises:
        ValueError: an unknown name (the message lists the built-ins).
    """
    names = list(DEFAULT_BUILTINS) if names is None else names
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise ValueError(f"unknown built-in matrix {unknown[0]!r}; built-ins: {', '.join(BUILTINS)}")
    return [Matrix(n, BUILTINS[n][0], BUILTINS[n][1]()) for n in names]
