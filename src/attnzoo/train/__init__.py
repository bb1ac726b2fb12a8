"""Training harness: typed configs, one readable loop, DDP, atomic checkpoints, the compare job.

>>> from attnzoo.train import load_config, train
>>> results = train(load_config(task="listops-mini", overrides={"steps": 50}))  # doctest: +SKIP
"""

from attnzoo.train.config import TrainConfig, config_from_dict, load_config
from attnzoo.train.loop import evaluate, train
from attnzoo.train.optim import optimizer_for
from attnzoo.train.runs import summarize, train_seeds

__all__ = [
    "TrainConfig",
    "config_from_dict",
    "evaluate",
    "load_config",
    "optimizer_for",
    "summarize",
    "train",
    "train_seeds",
]
