#!/usr/bin/env bash
# Set everything up, then run the checks CI runs: ruff lint (type hints on public functions
# included), ruff format, and the pytest suite (slow-marked end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
