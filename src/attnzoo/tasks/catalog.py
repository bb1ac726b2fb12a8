"""The registered tasks: LRA (ListOps, Text, Retrieval, Image, Pathfinder, Path-X) and synthetic ones.

Each entry ties an options dataclass to a ``TaskSpec`` builder, a generator (synthetic definitions)
and/or a loader (official files), and a writer of the official layout where one exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnzoo.tasks import images
from attnzoo.tasks.lra import cifar, listops, pathfinder, text
from attnzoo.tasks.lra.pathfinder_params import FOLDERS, lra_params
from attnzoo.tasks.spec import SPLITS, SplitArrays, Task, TaskSpec, register
from attnzoo.tasks.synthetic import bytes_lm, copying, lookup, psf, seq2seq

__all__: list[str] = []

PSF_SIZES = {"train": 200_000, "dev": 5_000, "test": 5_000}


def _rng(task: str, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), sum(map(ord, task))])


def _spec(name: str, n: int, kind: str, vocab: int, classes: int, desc: str, **kw: Any) -> TaskSpec:
    fields = {
        "num_features": 0,
        "target": "class",
        "paired": False,
        "pad_id": 0,
        "metric": "accuracy",
        "image_shape": None,
    }
    return TaskSpec(
        name=name,
        seq_len=n,
        input_kind=kind,
        vocab_size=vocab,
        num_classes=classes,
        description=desc,
        **{**fields, **kw},
    )


# ---------------------------------------------------------------- ListOps
def _listops_arrays(opts: listops.ListOpsOptions, sources: list[str], labels: np.ndarray, where: str) -> SplitArrays:
    return SplitArrays(*listops.encode(sources, opts.seq_len, where), labels)


def _listops_task(name: str, defaults: dict[str, int], sizes: dict[str, int], desc: str) -> Task:
    def describe(o: listops.ListOpsOptions) -> TaskSpec:
        return _spec(name, o.seq_len, "tokens", listops.VOCAB_SIZE, 10, desc)

    def generate(o: listops.ListOpsOptions, split: str, size: int, seed: int) -> SplitArrays:
        return _listops_arrays(o, *listops.generate_examples(o, split, size, seed), f"generated {split} split")

    def files(o: listops.ListOpsOptions, data_dir: Path, split: str) -> list[Path]:
        path = Path(data_dir) / f"basic_{ {'dev': 'val'}.get(split, split) }.tsv"
        if not path.is_file():
            raise ValueError(
                f"{name}: {path} not found; use lra_release/listops-1000 or `attnzoo data generate {name}`"
            )
        return [path]

    def load(o: listops.ListOpsOptions, data_dir: Path, split: str) -> SplitArrays:
        path = files(o, data_dir, split)[0]
        return _listops_arrays(o, *listops.read_tsv(path), str(path))

    def export(o: listops.ListOpsOptions, split: str, size: int, seed: int, out: Path) -> list[Path]:
        path = Path(out) / f"basic_{ {'dev': 'val'}.get(split, split) }.tsv"
        listops.write_tsv(path, *listops.generate_examples(o, split, size, seed))
        return [path]

    return Task(name, listops.ListOpsOptions, describe, sizes, generate, files, load, export, defaults=defaults)


register(
    _listops_task(
        "listops",
        {},
        {"train": 96_000, "dev": 2_000, "test": 2_000},
        "ListOps (LRA): nested MIN/MAX/MED/SM expressions, 500 < length < 2000 tokens, 10 classes",
    )
)
register(
    _listops_task(
        "listops-mini",
        {"max_depth": 10, "max_args": 10, "min_length": 64, "max_length": 256, "seq_len": 256},
        {"train": 10_000, "dev": 1_000, "test": 1_000},
        "ListOps at CPU length: the official depth 10 and 10 arguments, 64 < length < 256 tokens, 10 classes",
    )
)


# ---------------------------------------------------------------- Text and Retrieval
@dataclass(frozen=True)
class ByteOptions:
    """Bytes kept per document (LRA paper: 4K for Text; repo config 1000; Retrieval 4000 per document)."""

    seq_len: int = 4000


register(
    Task(
        "text",
        ByteOptions,
        lambda o: _spec("text", o.seq_len, "bytes", 257, 2, "IMDb reviews, byte level (LRA Text), 2 classes"),
        {},
        sources=lambda o, d, s: text.imdb_files(d, s),
        load=lambda o, d, s: text.read_imdb(d, s, o.seq_len),
        files_hint="data_dir = the aclImdb folder (or its parent): {train,test}/{pos,neg}/*.txt",
    )
)
register(
    Task(
        "retrieval",
        ByteOptions,
        lambda o: _spec(
            "retrieval",
            o.seq_len,
            "bytes",
            257,
            2,
            "AAN citation pairs, byte level, two inputs (LRA Retrieval)",
            paired=True,
        ),
        {},
        sources=lambda o, d, s: text.aan_files(d, s),
        load=lambda o, d, s: text.read_aan(d, s, o.seq_len),
        files_hint="data_dir = lra_release/tsv_data with new_aan_pairs.{train,eval,test}.tsv",
    )
)


# ---------------------------------------------------------------- Image
@dataclass(frozen=True)
class PixelOptions:
    """``shift_pixels=False`` is LRA's behaviour (pixel 0 doubles as padding: masked out); True gives
    ids = pixel + 1 and a full mask (the corrected behaviour)."""

    shift_pixels: bool = False


def _pixel_spec(name: str, side: int, shift: bool, classes: int, desc: str) -> TaskSpec:
    return _spec(name, side * side, "pixels", 257 if shift else 256, classes, desc, image_shape=(side, side))


register(
    Task(
        "image",
        PixelOptions,
        lambda o: _pixel_spec("image", 32, o.shift_pixels, 10, "grayscale CIFAR-10 as 1024 pixel tokens (LRA Image)"),
        {},
        sources=lambda o, d, s: cifar.cifar_files(d, s),
        load=lambda o, d, s: cifar.read_cifar_gray(d, s, o.shift_pixels),
        files_hint="data_dir = the cifar-10-batches-py folder (or its parent) from cifar-10-python.tar.gz",
        mask_zero_pixels=lambda o: not o.shift_pixels,
    )
)


# ---------------------------------------------------------------- Colour images (patch tokens, model.arch vit)
def _image_spec(name: str, side: int, classes: int, augment: bool, desc: str) -> TaskSpec:
    return _spec(
        name,
        side * side,
        "image",
        256,
        classes,
        desc,
        num_features=3,
        image_shape=(side, side),
        augmentation="crop-flip" if augment else "none",
    )


register(
    Task(
        "shapes2d",
        images.ShapesOptions,
        lambda o: _image_spec(
            "shapes2d",
            o.image_size,
            len(images.CLASSES),
            False,
            "procedural colour images: is the square of the frame's colour filled or hollow (2 classes)",
        ),
        {"train": 20_000, "dev": 1_000, "test": 2_000},
        lambda o, s, n, seed: images.image_arrays(*images.generate_shapes(o, n, _rng("shapes2d", seed, s))),
        version=2,  # 2: the frame-colour look-up (1 was the stacked / side-by-side relation)
    )
)
register(
    Task(
        "cifar10",
        images.CifarColorOptions,
        lambda o: _image_spec("cifar10", 32, 10, o.augment, "CIFAR-10 in colour (32 x 32 x 3), 10 classes"),
        {},
        sources=lambda o, d, s: cifar.cifar_files(d, s),
        load=lambda o, d, s: images.read_cifar_color(d, s),
        files_hint="data_dir = the cifar-10-batches-py folder (or its parent) from cifar-10-python.tar.gz",
    )
)
register(
    Task(
        "image-folder",
        images.FolderOptions,
        lambda o: _image_spec(
            "image-folder",
            o.image_size,
            o.num_classes,
            o.augment,
            "ImageFolder layout: data_dir/{train,val}/<class>/<image>, resized to image_size (Pillow)",
        ),
        {},
        sources=lambda o, d, s: images.folder_files(d, s),
        load=lambda o, d, s: images.read_folder(d, s, o),
        files_hint="data_dir = a folder with train/ and val/ (or dev/; test/ optional) holding one folder per class",
    )
)


# ---------------------------------------------------------------- Pathfinder / Path-X
@dataclass(frozen=True)
class PathfinderOptions:
    """Difficulty (easy 6 / intermediate 9 / hard 14 paddles per contour) and pixel-id convention."""

    difficulty: str = "hard"
    shift_pixels: bool = False


def _pathfinder_task(name: str, res: int, sizes: dict[str, int]) -> Task:
    def source(o: PathfinderOptions, data_dir: Path, split: str) -> pathfinder.SplitSource:
        return pathfinder.locate(Path(data_dir), FOLDERS[o.difficulty], res, split)

    def ids(o: PathfinderOptions, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1)
        return flat.astype(np.int16) + 1 if o.shift_pixels else flat

    def generate(o: PathfinderOptions, split: str, size: int, seed: int) -> SplitArrays:
        images, labels, _ = pathfinder.generate_images(lra_params(res, o.difficulty), size, seed, split)
        return SplitArrays(ids(o, images), np.full(size, res * res, dtype=np.int32), labels)

    def load(o: PathfinderOptions, data_dir: Path, split: str) -> SplitArrays:
        images, labels = pathfinder.read_split(source(o, data_dir, split), split, res)
        return SplitArrays(ids(o, images), np.full(len(labels), res * res, dtype=np.int32), labels)

    def export(o: PathfinderOptions, split: str, size: int, seed: int, out: Path) -> list[Path]:
        folder = Path(out) / FOLDERS[o.difficulty]
        return pathfinder.export_split(folder, name, lra_params(res, o.difficulty), split, size, seed)

    desc = f"Pathfinder {res}x{res}: are the two circles on one contour? ({res * res} pixel tokens)"
    if name == "pathx":
        desc = "Path-X: Pathfinder 128x128 with 14-paddle contours (16,384 pixel tokens)"
    return Task(
        name,
        PathfinderOptions,
        lambda o: _pixel_spec(name, res, o.shift_pixels, 2, desc),
        sizes,
        generate,
        lambda o, d, s: pathfinder.metadata_files(source(o, d, s).folder),
        load,
        export,
        files_hint=(
            f"data_dir = lra_release/pathfinder{res} (or one of its curv_* folders), "
            f"or the --out folder of `attnzoo data generate {name}`"
        ),
        mask_zero_pixels=lambda o: not o.shift_pixels,
    )


for _res in (32, 64, 128, 256):
    register(_pathfinder_task(f"pathfinder{_res}", _res, {"train": 160_000, "dev": 20_000, "test": 20_000}))
register(_pathfinder_task("pathx", 128, {"train": 160_000, "dev": 20_000, "test": 20_000}))


# ---------------------------------------------------------------- Synthetic
register(
    Task(
        "adding",
        psf.PsfOptions,
        lambda o: _spec(
            "adding",
            o.seq_len,
            "continuous",
            0,
            0,
            "PSF-Attn adding problem: 0.5 + (x[p1] + x[p2]) / 4, MSE",
            num_features=2,
            target="regression",
            metric="mse",
        ),
        PSF_SIZES,
        lambda o, s, n, seed: psf.adding(o, n, _rng("adding", seed, s)),
    )
)
register(
    Task(
        "temporal-order",
        psf.PsfOptions,
        lambda o: _spec(
            "temporal-order", o.seq_len, "tokens", 7, 4, "PSF-Attn temporal order: XX/XY/YX/YY among noise symbols"
        ),
        PSF_SIZES,
        lambda o, s, n, seed: psf.temporal_order(o, n, _rng("temporal-order", seed, s)),
    )
)
register(
    Task(
        "copy",
        copying.CopyOptions,
        lambda o: _spec(
            "copy",
            o.seq_len,
            "tokens",
            o.alphabet + 1,
            o.alphabet,
            "copying: repeat M tokens after a blank stretch",
            target="sequence",
        ),
        {"train": 10_000, "dev": 1_000, "test": 1_000},
        lambda o, s, n, seed: copying.copying(o, n, _rng("copy", seed, s), selective=False),
    )
)
register(
    Task(
        "selective-copy",
        copying.CopyOptions,
        lambda o: _spec(
            "selective-copy",
            o.seq_len,
            "tokens",
            o.alphabet + 1,
            o.alphabet,
            "selective copying (Mamba): copy M tokens scattered in noise",
            target="sequence",
        ),
        {"train": 10_000, "dev": 1_000, "test": 1_000},
        lambda o, s, n, seed: copying.copying(o, n, _rng("selective-copy", seed, s), selective=True),
        defaults={"seq_len": 4096, "num_tokens": 16, "alphabet": 16},
    )
)
register(
    Task(
        "associative-recall",
        copying.RecallOptions,
        lambda o: _spec(
            "associative-recall",
            o.input_seq_len + 2,
            "tokens",
            o.vocab + 1,
            o.vocab,
            "associative recall (H3/Hyena): recall the value of the queried key",
            target="sequence",
        ),
        {"train": 5_000, "dev": 500, "test": 500},
        lambda o, s, n, seed: copying.associative_recall(
            o, n, _rng("associative-recall", seed, s), lm_labels=s == "train"
        ),
    )
)
register(
    Task(
        "kv-lookup",
        lookup.LookupOptions,
        lambda o: _spec(
            "kv-lookup",
            o.seq_len,
            "tokens",
            o.vocab_size,
            o.num_values,
            "key-value lookup: Q queries at the end recall values stored anywhere in N tokens",
            target="sequence",
        ),
        {"train": 20_000, "dev": 1_000, "test": 1_000},
        lambda o, s, n, seed: lookup.kv_lookup(o, n, _rng("kv-lookup", seed, s)),
    )
)
register(
    Task(
        "bytes-lm",
        bytes_lm.BytesLMOptions,
        lambda o: _spec(
            "bytes-lm",
            o.seq_len,
            "bytes",
            257,
            256,
            "byte-level causal LM: next UTF-8 byte of generated English-like sentences (or data_dir/*.txt)",
            target="sequence",
        ),
        {"train": 20_000, "dev": 500, "test": 500},
        lambda o, s, n, seed: bytes_lm.generate_split(o, n, _rng("bytes-lm", seed, s)),
        lambda o, d, s: bytes_lm.text_files(d),
        bytes_lm.read_text_split,
        files_hint="data_dir = a folder of UTF-8 *.txt files (split 90/5/5 % into train/dev/test)",
    )
)


def _seq2seq_task(operation: str, desc: str) -> Task:
    def describe(o: seq2seq.Seq2SeqOptions) -> TaskSpec:
        vocab = o.vocab_size
        return _spec(operation, o.seq_len, "tokens", vocab, vocab, desc, target="seq2seq", paired=True)

    return Task(
        operation,
        seq2seq.Seq2SeqOptions,
        describe,
        {"train": 20_000, "dev": 1_000, "test": 1_000},
        lambda o, s, n, seed: seq2seq.generate(o, operation, n, _rng(operation, seed, s)),
    )


register(_seq2seq_task("reverse", "encoder-decoder: reverse a digit string (default 4-16 digits); exact sequences"))
register(_seq2seq_task("sort", "encoder-decoder: sort a digit string (default 4-16 digits); exact sequences"))
