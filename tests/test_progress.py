"""Progress bars (tqdm) and the package layering of viz/checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnzoo.progress import progress


def test_forced_bar_shows_desc_count_rate_and_postfix(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(total=5, desc="listops train", force=True, initial=2)
    bar.update(3)
    bar.set_postfix(loss=0.123456, acc=0.5)
    bar.close()
    err = capsys.readouterr().err
    assert "listops train" in err and "5/5" in err and "it/s" in err
    assert "loss=0.123" in err and "acc=0.5" in err


def test_bar_is_silent_off_a_terminal_or_when_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(4), desc="quiet")) == [0, 1, 2, 3]  # stderr is captured: not a terminal
    assert list(progress(range(3), desc="off", force=True, enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_viz_and_checkpoints_do_not_import_the_trainer() -> None:
    code = "import sys, attnzoo.viz.attention_map, attnzoo.checkpoints; print('attnzoo.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
