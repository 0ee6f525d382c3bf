#!/usr/bin/env bash
# One command: set up (idempotent) and run the main job: decompose a held-out toy-world image
# with the embedded base model on the CPU. Output: runs/demo/ (demo.png, preview.png, LoRAs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/unziplora demo --out runs/demo "$@"  # a rerun writes runs/demo-2, ...; nothing is replaced
