#!/usr/bin/env bash
# One command: set up (idempotent) and run the default test suite (CPU, offline, < 10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
