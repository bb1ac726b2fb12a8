"""Subprocess runner: ``python run_toy.py [--kill-at-step N | --signal-at-step N SIG] train ...`` with the
toy tasks installed.

``--kill-at-step N`` sends SIGKILL to this process when training logs step N (no cleanup runs),
standing in for a crash or pre-emption. ``--signal-at-step N SIGINT`` (or ``SIGTERM``) sends that
signal instead, as Ctrl-C or a scheduler would, at a known step. Also usable under ``torchrun``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toy_tasks

from attnzoo.train import log
from attnzoo.train.__main__ import main

if __name__ == "__main__":
    toy_tasks.install_globally()
    argv = sys.argv[1:]
    if argv[:1] in (["--kill-at-step"], ["--signal-at-step"]):
        kill_at = int(argv[1])
        sig = signal.SIGKILL if argv[0] == "--kill-at-step" else signal.Signals[argv[2]]
        argv = argv[2:] if argv[0] == "--kill-at-step" else argv[3:]
        original = log.MetricLogger.log

        def log_then_die(self, record, **kwargs):  # type: ignore[no-untyped-def]
            original(self, record, **kwargs)
            if record.get("split") == "train" and record["step"] == kill_at:
                os.kill(os.getpid(), sig)

        log.MetricLogger.log = log_then_die  # type: ignore[method-assign]
    raise SystemExit(main(argv))
