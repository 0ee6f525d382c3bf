#!/usr/bin/env bash
# Train the embedded toy-world model from scratch on one CUDA GPU, in one go: the VAE (6,000 steps,
# the committed recipe's passing length), its check against the renders, the UNet and both text
# encoders (--unet-steps, default 19,500, the CPU run's schedule) with a learning-curve point every
# minute, the export, and R1 (`unziplora bench base-model`) on the result. Everything goes to OUT
# (default build/gpu-train); the workdir resumes if the machine is lost. Needs torch for CUDA and
# this package's dependencies (diffusers, transformers, safetensors) importable by PYTHON.
#   scripts/train-embedded-gpu.sh                 on a CUDA machine
#   scripts/train-embedded-gpu.sh --dry-run       the same path on the CPU with a few steps
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-build/gpu-train}
if [ "${1:-}" = "--dry-run" ]; then
  # a 4-step VAE misses its check by design here: the gate is reported, not enforced
  device=cpu; steps=(--vae-steps 4 --unet-steps 4 --pool-size 64 --threads 1 --skip-vae-gate); curve=0; per_combo=1
else
  device=cuda
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "error: no CUDA GPU visible to torch; on a CPU run scripts/train-embedded-gpu.sh --dry-run" >&2; exit 2; }
  steps=(--vae-steps 6000 --unet-steps "${UNET_STEPS:-19500}" --render-workers "${RENDER_WORKERS:-8}" --threads 4)
  curve=${CURVE_EVERY_MIN:-1}; per_combo=4
fi
recipe=("$PYTHON" -m recipes.toyworld_model --workdir "$OUT/work" --device "$device" "${steps[@]}" --quiet)
"${recipe[@]}" --vae-only
"${recipe[@]}" --vae-check          # refuses (exit 1) when the VAE misses the renders by more than 5 points
"${recipe[@]}" --curve-every-min "$curve"
"${recipe[@]}" --export "$OUT/model"
"$PYTHON" -m unziplora.app.cli bench base-model --base-model "$OUT/model" --per-combo "$per_combo" \
  --json "$OUT/base_model.json"
echo "done: $OUT/model, its learning curve $OUT/work/curve.jsonl, R1 $OUT/base_model.json"
