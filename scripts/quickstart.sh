#!/usr/bin/env bash
# Install attnzoo, then run the main job on its small built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plot
exec attnzoo compare "$@"
