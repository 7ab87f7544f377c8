#!/usr/bin/env bash
# Set everything up, then run the toolkit's main job on its default.
# For now: the CLI's help and a tiny loss demo (later: the default protocol suite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/grpo-lab --help
.venv/bin/grpo-lab demo "$@"
