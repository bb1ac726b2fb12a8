"""``attnzoo pattern``: the PNG's black cells are exactly the mechanism's attended pairs."""

import sys

import numpy as np
import pytest
import torch

from attnzoo.cli import main
from attnzoo.ops.butterfly.naive import butterfly_mask
from attnzoo.ops.diffuser import resolve_graph
from attnzoo.ops.dilated import head_offsets
from attnzoo.sparse import dilated_segments
from attnzoo.tasks.png import read_png_gray
from attnzoo.viz.pattern import GAP


def panels_of(path, n, count, scale):
    """Split the image back into ``count`` boolean (N, N) panels (True = drawn black/grey)."""
    image = read_png_gray(path)
    assert image.shape == (n * scale, count * n * scale + (count - 1) * GAP * scale)
    out = []
    for i in range(count):
        start = i * (n + GAP) * scale
        cell = image[::scale, start : start + n * scale : scale]
        gap = image[:, start + n * scale : start + (n + GAP) * scale]
        assert gap.size == 0 or (gap == 255).all()
        out.append(cell < 255)
    return out


def run(tmp_path, name, n, *options):
    out = tmp_path / f"{name}.png"
    argv = ["pattern", name, "--length", str(n), "--out", str(out), "--scale", "2", "--raw"]
    for opt in options:
        argv += ["--option", opt]
    assert main(argv) == 0
    return out


def test_local_sliding_window(tmp_path):
    (panel,) = panels_of(run(tmp_path, "local", 40, "window_size=3"), 40, 1, 2)
    i = np.arange(40)
    assert np.array_equal(panel, np.abs(i[:, None] - i[None, :]) <= 3)


def test_butterfly_one_panel_per_stage(tmp_path, capsys):
    panels = panels_of(run(tmp_path, "butterfly", 64, "block_size=4"), 64, 3, 2)
    assert "stage 2" in capsys.readouterr().out
    for stage, panel in enumerate(panels):
        assert np.array_equal(panel, butterfly_mask(64, 4, stage).numpy())


def test_dilated_panels_per_head_group(tmp_path, capsys):
    path = run(tmp_path, "dilated", 32, "segment_lengths=8,16", "dilation_rates=1,2")
    assert "heads 0,1; dilated heads 2,3" in capsys.readouterr().out
    masks = [dilated_segments(32, w, r, head_offsets(4, r, "torchscale")).to_dense() for w, r in ((8, 1), (16, 2))]
    union = (masks[0] | masks[1]).numpy()  # (H, N, N)
    panels = panels_of(path, 32, 2, 2)
    assert np.array_equal(panels[0], union[0]) and np.array_equal(panels[1], union[2])


def test_diffuser_draws_pairs_within_k_hops(tmp_path):
    opts = ("attention_window=8", "num_rand=16", "num_glob=0", "hops=2")
    (panel,) = panels_of(run(tmp_path, "diffuser", 48, *opts), 48, 1, 2)
    graph = resolve_graph(48, "attnzoo", 8, 16, 0, 0).to_dense().double()
    reach = torch.linalg.matrix_power(torch.eye(48, dtype=torch.float64) + graph, 2) > 0
    assert np.array_equal(panel, reach.numpy())
    assert not reach.all()  # the figure is not trivially full


def test_weights_style_and_errors(tmp_path, capsys):
    out = tmp_path / "w.png"
    assert main(["pattern", "local", "--length", "16", "--out", str(out), "--style", "weights", "--raw"]) == 0
    image = read_png_gray(out)
    assert image.min() >= 54 and (image < 255).any()
    assert main(["pattern", "local", "--length", "16", "--out", str(out), "--option", "nope=1"]) == 2
    assert "unknown option 'nope'" in capsys.readouterr().err
    assert main(["pattern", "local", "--length", "0", "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["pattern", "local", "--out", str(out)])


def test_figure_has_labelled_axes_and_a_title(tmp_path, monkeypatch, capsys):
    """The default output is a matplotlib figure: axes key/query position, a title with the options."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    saved = {}
    original = matplotlib.figure.Figure.savefig

    def keep(fig, handle, **kwargs):
        saved["axes"] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in fig.axes]
        saved["title"], saved["format"] = fig._suptitle.get_text(), kwargs["format"]
        return original(fig, handle, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    argv = ["pattern", "dilated", "--length", "32", "--option", "segment_lengths=8,16"]
    argv += ["--option", "dilation_rates=1,2"]
    assert main([*argv, "--out", str(tmp_path / "d.jpg")]) == 0
    assert saved["format"] == "jpg" and (tmp_path / "d.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG
    assert saved["title"] == "dilated, N = 32 (segment_lengths=(8, 16), dilation_rates=(1, 2)): attended pairs"
    assert saved["axes"] == [
        ("key position", "query position", "dilated heads 0,1"),
        ("key position", "query position", "dilated heads 2,3"),
    ]
    assert main([*argv, "--out", str(tmp_path / "d.svg")]) == 0
    assert b"<svg" in (tmp_path / "d.svg").read_bytes()[:400]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "d.xyz")]) == 2
    assert "cannot write .xyz figures; use one of" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "d.jpg"), "--raw"]) == 2
    assert "--raw writes PNG only; name the file .png" in capsys.readouterr().err


def test_without_matplotlib_png_falls_back_to_exact_pixels(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    out = tmp_path / "l.png"
    assert main(["pattern", "local", "--length", "8", "--out", str(out), "--option", "window_size=1"]) == 0
    assert "(exact pixels)" in capsys.readouterr().out
    assert read_png_gray(out).shape == (8 * 64, 8 * 64)  # scale 512 // 8
    assert main(["pattern", "local", "--length", "8", "--out", str(tmp_path / "l.pdf")]) == 2
    assert "a figure needs matplotlib" in capsys.readouterr().err
