"""Seconds per optimiser step of a preset's model, one row per attention: what a long training run will cost.

Usage: python3 scripts/train_step_time.py [--preset nystromformer] [--task listops] [--steps 4] [--warmup 2]

Builds the model of ``attnzoo train --preset P --task T --attention A`` (the options of each ListOps row of
``docs/results.md``), feeds it one fixed random batch of the preset's batch size and full task length (real
lengths drawn between half and all of it, the rest padding), and times forward, backward and an AdamW step in
train mode (dropout on). Data loading, evaluation and checkpoints are not included. Prints a Markdown table.
Run it alone: other busy processes on the same cores change the numbers.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attnzoo import tasks
from attnzoo.models.heads import build_model
from attnzoo.train.config import load_config

ROWS = {  # docs/results.md: the official extra_attn_config of each Nystromformer ListOps row
    "nystrom": {"num_landmarks": 64, "conv_kernel": 35, "compat": "nystromformer-lra"},
    "linformer": {"proj_dim": 256, "max_length": 2048, "sharing": "kv"},
    "performer": {"num_features": 256, "feature_eps": 6.25e-6, "compat": "nystromformer-lra"},
    "reformer": {
        "num_hashes": 2,
        "bucket_size": 64,
        "num_buckets": (64,),
        "hash_seed": None,
        "pad_slots": True,
    },
    "none": {},
}


def step_seconds(preset: str, task: str, attention: str, options: dict, steps: int, warmup: int) -> float:
    """Mean seconds of one training step (forward, backward, AdamW) over ``steps`` after ``warmup``."""
    cfg = load_config(
        task=task, preset=preset, overrides={"model.attention": attention, "model.attention_options": options}
    )
    spec = tasks.get(cfg.task, **cfg.task_options)
    torch.manual_seed(0)
    model = build_model(spec, cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6)
    batch, length = cfg.batch_size, model.length
    real = torch.randint(length // 2, length + 1, (batch,))
    mask = torch.arange(length)[None] < real[:, None]
    inputs = {
        "input_ids": torch.randint(1, spec.vocab_size, (batch, length)) * mask,
        "mask": mask,
        "label": torch.randint(0, spec.num_classes, (batch,)),
    }

    def step() -> None:
        F.cross_entropy(model(inputs), inputs["label"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nystromformer")
    parser.add_argument("--task", default="listops")
    parser.add_argument("--attention", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}, task {args.task}")
    print("| attention | s / step | hours for 5,000 steps |")
    print("|---|---:|---:|")
    for attention in args.attention:
        seconds = step_seconds(args.preset, args.task, attention, ROWS[attention], args.steps, args.warmup)
        print(f"| {attention} | {seconds:.2f} | {seconds * 5000 / 3600:.1f} |", flush=True)


if __name__ == "__main__":
    main()
