#!/usr/bin/env bash
# Create .venv (if missing) and install unziplora with the pinned, CPU-only dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and exactly pinned: it is the CPU build; other packages must not pull a CUDA one.
.venv/bin/python -m pip install -q -c requirements/constraints.txt torch
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[test,ui]"
