#!/usr/bin/env bash
# One command: set up (idempotent) and run the default test suite (CPU, offline, < 10 min). A skipped
# test is listed with its reason in the summary (-rs in pyproject.toml's addopts).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/browser-deps.sh  # Chromium for the browser test, where it can be installed (else one note)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
