#!/usr/bin/env bash
# Set everything up, then run the toolkit's main job on its default.
# The CLI help, a tiny loss demo, then the default protocol suite (protocols/*.toml, full budget;
# pass --quick for the quick one) with its verdicts and report under results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/grpo-lab --help
.venv/bin/grpo-lab demo
.venv/bin/grpo-lab run "$@"
