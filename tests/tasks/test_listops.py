"""ListOps: official bounds, labels checked by an independent evaluator, determinism, TSV round trip."""

from __future__ import annotations

import numpy as np
import pytest

from attnzoo import tasks
from attnzoo.tasks.lra import listops


def _independent_value(source: str) -> int:
    """Evaluate the printed left-nested pair form by recursive descent (no shared code with listops)."""
    toks = source.replace("(", " ").replace(")", " ").split()
    pos = 0

    def node() -> int:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if not tok.startswith("["):
            return int(tok)
        args = []
        while toks[pos] != "]":
            args.append(node())
        pos += 1
        s = sorted(args)
        return {
            "[MIN": s[0],
            "[MAX": s[-1],
            "[MED": int(np.median(s)),
            "[SM": sum(s) % 10,
        }[tok]

    value = node()
    assert pos == len(toks)
    return value


def test_official_bounds_and_labels() -> None:
    opts = listops.ListOpsOptions()
    sources, labels = listops.generate_examples(opts, "train", 40, seed=3)
    assert len(set(sources)) == 40
    for src, label in zip(sources, labels, strict=True):
        n = len(listops.tokenize(src))
        assert opts.min_length < n < opts.max_length
        assert _independent_value(src) == label
        assert src.count("(") == src.count(")")


def test_mini_bounds_determinism_and_disjoint_splits() -> None:
    opts = tasks.get_task("listops-mini").options()
    assert (opts.max_depth, opts.max_args) == (10, 10)  # the official shape, only shorter
    a, la = listops.generate_examples(opts, "train", 120, seed=0)
    b, lb = listops.generate_examples(opts, "train", 120, seed=0)
    c, _ = listops.generate_examples(opts, "train", 120, seed=1)
    assert a == b and np.array_equal(la, lb) and a != c
    test, _ = listops.generate_examples(opts, "test", 40, seed=0)
    assert not set(test) & set(a)
    lengths = [len(listops.tokenize(s)) for s in a]
    assert min(lengths) > opts.min_length and max(lengths) < opts.max_length
    assert all(_independent_value(s) == v for s, v in zip(a, la, strict=True))
    assert np.bincount(la, minlength=10).min() > 0


def test_example_from_spec() -> None:
    assert listops.evaluate_tree("( ( ( [MAX 2 ) 9 ) ] )") == 9
    assert listops.evaluate_tree("( ( ( [MED 1 ) 2 ) ] )") == 1
    assert listops.tokenize("( ( ( [MAX 2 ) 9 ) ] )").tolist() == [11, 3, 10, 15]


def test_tsv_round_trip(tmp_path) -> None:
    opts = tasks.get_task("listops-mini").options()
    sources, labels = listops.generate_examples(opts, "dev", 20, seed=0)
    listops.write_tsv(tmp_path / "basic_val.tsv", sources, labels)
    back, back_labels = listops.read_tsv(tmp_path / "basic_val.tsv")
    assert back == sources and np.array_equal(back_labels, labels)
    ds = tasks.load_split("listops-mini", "dev", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    gen = tasks.load_split("listops-mini", "dev", size=20, cache_dir=tmp_path / "cache")
    assert all(bool((ds[i]["input_ids"] == gen[i]["input_ids"]).all()) for i in range(20))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("Source\tTarget\n( [MAX 1 ] )\t1\textra\n", r"basic_test.tsv:2: expected 2 tab-separated columns, got 3"),
        ("Source\tTarget\n( [MAX 1 ] )\t12\n", r"basic_test.tsv:2: label 12 out of range"),
        ("Source\tTarget\n( [MAX 1 ] )\tx\n", r"basic_test.tsv:2: label 'x' is not an integer"),
        ("1\t( [MAX 1 ] )\n", r"basic_test.tsv:1: expected the header"),
        (
            "Source\tTarget\n( [MAX 1 ] )\t1\n\n( [MIN 2 ] )\t2\n",
            r"basic_test.tsv:3: blank line before the row at line 4",
        ),
    ],
)
def test_malformed_tsv(tmp_path, body: str, match: str) -> None:
    (tmp_path / "basic_test.tsv").write_text(body)
    with pytest.raises(ValueError, match=match):
        tasks.load_split("listops", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_token_limit_keeps_the_official_distribution() -> None:
    """Abandoning a tree at the limit returns exactly the trees the unlimited generator would keep."""
    import random

    draws_full, draws_cut = random.Random(5), random.Random(5)
    for _ in range(300):
        full = listops.generate_tree(draws_full, 1, 10, 10)
        state = draws_cut.getstate()
        cut = listops.generate_tree(draws_cut, 1, 10, 10, limit=64)
        if full is not None and full[2] < 64:
            assert cut == full  # same random calls, same tree
        else:
            assert cut is None
        draws_cut.setstate(state)
        listops.generate_tree(draws_cut, 1, 10, 10)  # keep both streams aligned for the next tree
        assert draws_cut.getstate() == draws_full.getstate()


def test_invalid_utf8_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "basic_train.tsv"
    path.write_bytes(b"Source\tTarget\n( [MIN 1 2 ] )\t1\n\xff\xfe\t3\n")
    with pytest.raises(ValueError, match=r"basic_train\.tsv: not valid UTF-8 \(line 3"):
        listops.read_tsv(path)


def test_reading_follows_the_official_loader_and_says_what_it_changed(tmp_path) -> None:
    """Unknown tokens -> OOV and rows past N truncated (as LRA's input pipeline), one warning with the counts;
    blank lines at the end are ignored."""
    rows = ["( [MAX 1 [FIRST 2 ] ] )\t1", "( [MIN 3 4 ] )\t3", "( [SM 1 2 3 4 5 ] )\t5", "( [MAX [LAST 7 ] ] )\t7"]
    (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n" + "\n".join(rows) + "\n\n\n")
    with pytest.warns(UserWarning) as caught:
        ds = tasks.load_split("listops", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache", seq_len=6)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"listops {tmp_path / 'basic_test.tsv'}: 2 unknown tokens mapped to the OOV id 16 ('[FIRST' x1, '[LAST' x1); "
        "1 of 4 rows longer than N = 6 truncated (longest 7)"
    )
    assert len(ds) == 4
    first = ds[0]["input_ids"].tolist()  # [MAX 1 [FIRST 2 X X
    assert first == [11, 2, 16, 3, 15, 15]
    assert ds[2]["input_ids"].tolist() == [14, 2, 3, 4, 5, 6] and int(ds[2]["mask"].sum()) == 6
