#!/usr/bin/env bash
# Install attnzoo and what it needs into the current Python environment.
# torch is installed first and pinned (2.13.0) when it is missing, so pip never resolves an
# unpinned torch (which would pull several GB of CUDA packages). Usage: scripts/setup.sh [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras="${1:-plot}"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
