#!/usr/bin/env bash
# Install attnzoo with its test tools, check style, run the test suite (slow tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,plot,hf
python3 -m ruff check src tests
python3 -m pytest -p no:cacheprovider "$@"
