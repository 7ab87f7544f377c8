#!/usr/bin/env bash
# Set up grpo_lab from nothing: a virtual environment in .venv, torch==2.13.0 first when it is
# absent (any other torch request may pull a multi-GB CUDA build), then the project with its
# test extras, as declared in pyproject.toml. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "grpo_lab needs Python >= 3.10; '$PY' is $("$PY" --version 2>&1 || echo missing)." >&2
    echo "Point PYTHON at a newer interpreter: PYTHON=python3.11 bash scripts/setup.sh" >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
fi

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "[setup] installing torch==2.13.0"
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi

echo "[setup] installing grpo_lab[test]"
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "[setup] done: $(.venv/bin/python -c 'import torch, grpo_lab; print("grpo_lab", grpo_lab.__version__, "torch", torch.__version__)')"
