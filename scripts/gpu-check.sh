#!/usr/bin/env bash
# The GPU check, at most 8 minutes on one CUDA GPU: the full-size SDXL UNet architecture (random
# weights, 1024 px, frozen fp16) trained one step at a time by UnZipLoRA and by a plain PEFT LoRA,
# with and without gradient checkpointing and under torch.compile: step times, peak memory, the
# ratios; then the full-size FLUX.1 transformer architecture (random weights, frozen bf16, 1024 px)
# a few UnZipLoRA steps with and without checkpointing, skipped with the reason below 32 GB of free
# GPU memory (--no-flux skips it); written to benchmarks/results/cuda_<GPU>.json (+ .md) after every
# method, so a time limit keeps what was measured. Needs torch for CUDA (install it for your GPU first, then `pip install -e .`).
#   scripts/gpu-check.sh                          on a CUDA machine
#   scripts/gpu-check.sh --dry-run [--no-compile] the same path on the CPU with a small UNet and transformer
# GPU_CHECK_JSON=FILE writes the result there instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ "${1:-}" = "--dry-run" ]; then
  exec "$PYTHON" -m unziplora.bench.cuda "$@" --json "${GPU_CHECK_JSON:-${TMPDIR:-/tmp}/cuda_dry_run.json}"
fi
gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else '')")
if [ -z "$gpu" ]; then
  echo "error: no CUDA GPU visible to torch; on a CPU run scripts/gpu-check.sh --dry-run" >&2
  exit 2
fi
exec timeout 480 "$PYTHON" -m unziplora.bench.cuda "$@" --json "${GPU_CHECK_JSON:-benchmarks/results/cuda_${gpu}.json}"
