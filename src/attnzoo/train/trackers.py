"""Optional experiment trackers beside TensorBoard: Weights & Biases and MLflow (``log_to: wandb,mlflow``).

Both are off by default and need their package (``pip install -e ".[wandb]"`` / ``".[mlflow]"``); a
missing one is a one-line error naming the extra. Every record the run logs (train, dev and test
metrics) is sent as ``<split>/<metric>`` at its step; the run's config is sent once as parameters.

Offline-safe: wandb runs in offline mode (files under ``<run_dir>/wandb``, ``wandb sync`` uploads them
later) unless the user configured it (``WANDB_MODE``, ``WANDB_API_KEY`` or a ``wandb login`` entry in
``~/.netrc``); MLflow writes where ``MLFLOW_TRACKING_URI`` points, by default the local ``./mlruns`` store.
Only rank 0 opens trackers.
"""

from __future__ import annotations

import importlib
import netrc
import os
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MlflowTracker", "Tracker", "WandbTracker", "open_trackers", "require_trackers", "wandb_mode"]


class Tracker(Protocol):
    """What :class:`~attnzoo.train.log.MetricLogger` sends records to."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send ``{"<split>/<metric>": value}`` at optimiser step ``step``."""

    def close(self) -> None:
        """Finish the tracker's run."""


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f"log_to {name} needs the {name} package: pip install {name} (or the attnzoo extra: "
            f'pip install -e ".[{name}]"); remove {name} from --log-to to train without it'
        ) from None


def require_trackers(names: list[str]) -> None:
    """Import each tracker's package now, so a missing one fails before any data is loaded.

    Raises:
        ImportError: naming the package and its pip extra.
    """
    for name in names:
        _require(name)


def wandb_mode() -> str:
    """``"offline"`` unless the user configured wandb (``WANDB_MODE``, ``WANDB_API_KEY`` or ``~/.netrc``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


class WandbTracker:
    """A wandb run named after the run folder (project ``WANDB_PROJECT``, default ``attnzoo``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        wandb = _require("wandb")
        self.mode = wandb_mode()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "attnzoo"),
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            mode=self.mode,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send ``metrics`` at ``step``."""
        self.run.log(metrics, step=step)

    def close(self) -> None:
        """Finish the wandb run."""
        self.run.finish()


class MlflowTracker:
    """An MLflow run named after the run folder, in experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``attnzoo``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow")
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "attnzoo"))
        self.mlflow.start_run(run_name=run_dir.name)
        self.mlflow.log_params({key: str(value)[:500] for key, value in _flat(config).items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send ``metrics`` at ``step``."""
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        """End the MLflow run."""
        self.mlflow.end_run()


TRACKER_CLASSES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(names: list[str], run_dir: Path, config: dict[str, Any]) -> list[Tracker]:
    """One tracker per name in ``names`` (``TrainConfig.trackers()``), each sent ``config`` once.

    Raises:
        ImportError: a tracker's package is not installed (the message names the pip extra).
    """
    return [TRACKER_CLASSES[name](run_dir, config) for name in names]
