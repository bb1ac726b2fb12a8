"""Run logs: ``metrics.jsonl`` and ``metrics.csv`` always, TensorBoard when it is installed, and the
trackers of :mod:`attnzoo.train.trackers` (wandb, MLflow) when asked for.

Records are kept in memory and both files are rewritten atomically on ``flush`` (so a crash never
leaves a torn line); a resumed run reloads the records up to its checkpoint's step and continues.
Only rank 0 logs (``enabled=False`` elsewhere).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnzoo.io import atomic_write_text

if TYPE_CHECKING:
    from attnzoo.train.trackers import Tracker

__all__ = ["MetricLogger", "read_records"]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (empty list when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricLogger:
    """Collects ``{"step", "split", ...}`` records; writes JSONL + CSV (+ TensorBoard scalars, + ``trackers``)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
        trackers: list[Tracker] | None = None,
    ):
        self.run_dir, self.enabled = run_dir, enabled
        self.trackers = list(trackers or []) if enabled else []
        self.records: list[dict[str, Any]] = []
        if enabled and resume_step is not None:
            self.records = [r for r in read_records(run_dir / "metrics.jsonl") if r.get("step", 0) <= resume_step]
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL/CSV only
                pass
            else:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any], *, flush: bool = True) -> None:
        """Add one record (numbers and strings); ``flush`` rewrites the files."""
        if not self.enabled:
            return
        self.records.append(record)
        split, step = record.get("split", "train"), record.get("step", 0)
        scalars = {
            f"{split}/{key}": value
            for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
        }
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        for tracker in self.trackers:
            tracker.log(scalars, step)
        if flush:
            self.flush()

    def flush(self) -> None:
        """Atomically rewrite ``metrics.jsonl`` and ``metrics.csv``."""
        if not self.enabled:
            return
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        columns: list[str] = []
        for record in self.records:
            columns.extend(k for k in record if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush, close TensorBoard and finish the trackers' runs."""
        self.flush()
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
