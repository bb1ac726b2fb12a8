"""Synthetic tasks follow their definitions (PSF-Attn adding/temporal order, copying, recall)."""

from __future__ import annotations

import numpy as np
import pytest

from attnzoo import tasks


def _arrays(name: str, split: str = "train", size: int = 64, **opts):
    task = tasks.get_task(name)
    return task.generate(task.options(**opts), split, size, 0)


def test_adding_problem() -> None:
    a = _arrays("adding", seq_len=128)
    x, marker = a.inputs[..., 0], a.inputs[..., 1]
    assert a.inputs.shape == (64, 128, 2) and (x > -1).all() and (x <= 1).all()
    assert (marker.sum(1) == 2).all()
    expected = 0.5 + (x * marker).sum(1) / 4
    np.testing.assert_allclose(a.labels, expected, rtol=1e-6)
    assert tasks.get("adding").metric == "mse" and tasks.get("adding").num_features == 2


def test_temporal_order() -> None:
    a = _arrays("temporal-order", seq_len=256)
    sym = a.inputs.astype(int) - 1
    for row, label in zip(sym, a.labels, strict=True):
        pos = np.flatnonzero(row >= 4)
        assert len(pos) == 2
        assert label == 2 * (row[pos[0]] - 4) + (row[pos[1]] - 4)
    assert set(np.unique(sym)) <= set(range(6))


@pytest.mark.parametrize("length", [64, 2**15])
def test_psf_lengths_are_checked(length: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        tasks.get("adding", seq_len=length)


def test_copying_layout() -> None:
    a = _arrays("copy")
    tok = a.inputs.astype(int) - 1
    m, n = 10, 120
    assert (tok[:, m : n - m] == 0).all() and (tok[:, n - m :] == 9).all()
    np.testing.assert_array_equal(a.labels[:, n - m :], tok[:, :m])
    assert (a.labels[:, : n - m] == -100).all()


def test_selective_copy_keeps_order() -> None:
    a = _arrays("selective-copy", seq_len=200, num_tokens=8)
    tok = a.inputs.astype(int) - 1
    body = tok[:, :192]
    for row, lab in zip(body, a.labels[:, -8:], strict=True):
        np.testing.assert_array_equal(row[row != 0], lab)
    assert (tok[:, 192:] == 15).all()


def test_associative_recall() -> None:
    train = _arrays("associative-recall", "train", 200)
    test = _arrays("associative-recall", "test", 200)
    assert train.inputs.shape == (200, 42)
    assert (test.labels[:, :-1] == -100).all() and (train.labels[:, :-1] != -100).all()
    x = test.inputs.astype(int) - 1
    for row, lab in zip(x, test.labels[:, -1], strict=True):
        assert row[-2] == 18  # "=>"
        keys, values = row[:-2:2], row[1:-2:2]
        assert lab in values[keys == row[-1]]
    assert len({r.tobytes() for r in train.inputs}) == 200


def test_determinism_per_seed() -> None:
    t = tasks.get_task("temporal-order")
    o = t.options(seq_len=128)
    assert np.array_equal(t.generate(o, "dev", 8, 5).inputs, t.generate(o, "dev", 8, 5).inputs)
    assert not np.array_equal(t.generate(o, "dev", 8, 5).inputs, t.generate(o, "dev", 8, 6).inputs)
