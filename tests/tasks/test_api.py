"""Registry, load_split and the cache, collate/bucketing, and the ``data`` CLI."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from attnzoo import tasks
from attnzoo.tasks import cli
from attnzoo.tasks.lra import listops

NAMES = [
    "listops",
    "listops-mini",
    "text",
    "retrieval",
    "image",
    "shapes2d",
    "cifar10",
    "image-folder",
    "pathfinder32",
    "pathfinder64",
    "pathfinder128",
    "pathfinder256",
    "pathx",
    "adding",
    "temporal-order",
    "copy",
    "selective-copy",
    "associative-recall",
    "kv-lookup",
    "bytes-lm",
    "reverse",
    "sort",
]


def test_registry() -> None:
    assert [s.name for s in tasks.available()] == NAMES
    spec = tasks.get("pathx")
    assert (spec.seq_len, spec.vocab_size, spec.num_classes, spec.image_shape) == (16384, 256, 2, (128, 128))
    assert tasks.get("listops").vocab_size == 17 and tasks.get("retrieval").paired
    with pytest.raises(ValueError, match=r"known tasks: .*listops"):
        tasks.get("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]; valid options"):
        tasks.get("copy", bogus=1)


@pytest.mark.parametrize(
    "name", ["listops-mini", "pathfinder32", "adding", "temporal-order", "copy", "selective-copy", "associative-recall"]
)
def test_generated_splits_batch(tmp_path, name: str) -> None:
    opts = {"seq_len": 128} if name in ("adding", "temporal-order") else {}
    ds = tasks.load_split(name, "train", cache_dir=tmp_path, size=8, **opts)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=tasks.collate)))
    n = ds.spec.seq_len
    assert batch["mask"].shape == (4, n) and batch["mask"].dtype == torch.bool
    want = torch.float32 if ds.spec.input_kind == "continuous" else torch.int64
    assert batch["input_ids"].dtype == want and batch["input_ids"].shape[:2] == (4, n)
    if ds.spec.input_kind != "continuous":
        assert int(batch["input_ids"].max()) < ds.spec.vocab_size
    assert batch["label"].shape == ((4, n) if ds.spec.target == "sequence" else (4,))


def test_cache_hit_rebuild_and_mmap(tmp_path) -> None:
    data = tmp_path / "data"
    sources, labels = listops.generate_examples(tasks.get_task("listops-mini").options(), "train", 30, 0)
    listops.write_tsv(data / "basic_train.tsv", sources, labels)
    ds = tasks.load_split("listops-mini", "train", data_dir=data, cache_dir=tmp_path / "c")
    assert isinstance(ds.arrays.inputs, np.memmap)
    (entry,) = (tmp_path / "c" / "listops-mini").iterdir()
    stamp = (entry / "header.json").stat().st_mtime_ns
    tasks.load_split("listops-mini", "train", data_dir=data, cache_dir=tmp_path / "c")
    assert (entry / "header.json").stat().st_mtime_ns == stamp  # reused
    listops.write_tsv(data / "basic_train.tsv", sources[:10], labels[:10])
    os.utime(data / "basic_train.tsv", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert len(tasks.load_split("listops-mini", "train", data_dir=data, cache_dir=tmp_path / "c")) == 10


def test_length_bucketing() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=103)
    sampler = tasks.LengthBucketSampler(lengths, batch_size=8, pool_batches=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) and sorted(i for b in batches for i in b) == list(range(103))
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) == 8])
    assert spread < np.ptp(lengths) / 2


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_generate_info(tmp_path, capsys) -> None:
    assert _run(["data", "list"]) == 0
    assert "pathfinder128" in capsys.readouterr().out
    assert _run(["data", "generate", "listops-mini", "--out", str(tmp_path / "lo"), "--size", "5"]) == 0
    assert (
        _run(
            [
                "data",
                "generate",
                "copy",
                "--out",
                str(tmp_path / "cp"),
                "--size",
                "5",
                "--option",
                "seq_len=40",
                "--splits",
                "dev",
            ]
        )
        == 0
    )
    assert _run(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "basic_val.tsv: 6 lines" in out and "task=copy split=dev" in out and "inputs (5, 40)" in out


def test_generate_refuses_to_overwrite_files(tmp_path, capsys) -> None:
    from attnzoo.cli import main

    out = tmp_path / "listops-1000"
    gen = ["data", "generate", "listops-mini", "--out", str(out), "--size", "4"]
    assert main([*gen, "--splits", "train"]) == 0
    official = out / "basic_train.tsv"
    official.write_text("Source\tTarget\n( [MAX 2 9 ] )\t9\n")  # stands in for a released file
    capsys.readouterr()
    assert main([*gen, "--splits", "train", "dev"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"attnzoo data: error: {out} already holds basic_train.tsv; pass --overwrite to replace them or another --out\n"
    )
    assert official.read_text() == "Source\tTarget\n( [MAX 2 9 ] )\t9\n" and not (out / "basic_val.tsv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listops-1000"]  # no staging folder left behind
    assert main([*gen, "--splits", "dev"]) == 0  # a split with no file there yet is added
    assert capsys.readouterr().out == f"dev: 4 examples -> {out / 'basic_val.tsv'}\n"
    assert main([*gen, "--splits", "train", "--overwrite"]) == 0
    assert len(official.read_text().splitlines()) == 5
    (tmp_path / "file").write_text("")
    assert main(["data", "generate", "copy", "--out", str(tmp_path / "file"), "--size", "2"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
