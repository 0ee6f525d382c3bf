#!/usr/bin/env bash
# The prepared device run for benchmarks/gpu_pretrain.py: arms trained side by side on one GPU from
# ONE shared latent pool, inside a wall-clock budget, their weights (in parts of <= 15 MB) and records
# written to $OUT. Made for the device tool's lease (15 minutes in all, 10 a command, files of <= 16 MB
# back), so the training budget is what the budget leaves after the pool and before the judging.
#
#   BUDGET_S=540 bash benchmarks/gpu_session.sh "wide=--unet-width 48 96 192" "scratch="
#
# Each argument is NAME=FLAGS (extra gpu_pretrain.py flags). An arm on another latent names it and
# its VAE (--latent 2x8 --init VAE.safetensors: scripts/train_base_model.py --vae-only, then
# --export-vae); arms on one latent share one pool, so they must name the same VAE.
# Environment: OUT (required), BUDGET_S (540), JUDGE_S (seconds kept for saving and judging, 120),
# DEVICE (cuda), BATCH (1024), POOL_SIZE (64000), WORKERS (14), JUDGE_PER_COMBO (4), WHEELS (.whl),
# PYTHON (python3), WORK (/tmp/gpu_session: the pool and the arms' workdirs, kept out of $OUT).
# Wheels in .whl/ (see the device tool's README) are installed first when present. What the H100
# image lacked on 2026-11-27 (Python 3.12; it has torch, accelerate, peft, tokenizers 0.23.2 and
# huggingface_hub 1.33): diffusers==0.42.1 transformers==5.24.0 regex importlib_metadata, 21 MB.
set -u
: "${OUT:?set OUT to the folder the results go to}"
BUDGET_S=${BUDGET_S:-540} JUDGE_S=${JUDGE_S:-120} DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-1024}
POOL_SIZE=${POOL_SIZE:-64000} WORKERS=${WORKERS:-14} JUDGE_PER_COMBO=${JUDGE_PER_COMBO:-4}
[ $# -ge 1 ] || { echo "error: name at least one arm, e.g. \"wide=--unet-width 48 96 192\"" >&2; exit 2; }
start=$(date +%s)
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "error: the wheels in .whl/ did not install" >&2; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu_session}
mkdir -p "$WORK"
common=(--device "$DEVICE" --batch "$BATCH" --pool-size "$POOL_SIZE" --judge-per-combo "$JUDGE_PER_COMBO")

# One pool per latent (an arm's --latent, 4x without it), shared by the arms on it: a pool depends on
# the seed, its size and the VAE only (Pretrainer._pool_key), so arms on one latent must name one VAE.
latent_of() { local l; l=$(grep -o -- "--latent [^ ]*" <<< "$1" | cut -d' ' -f2); echo "${l:-4x}"; }
declare -A pool_flags=()
for spec in "$@"; do
  latent=$(latent_of "${spec#*=}")
  # the first arm on a latent gives its pool's flags (the leading space marks even empty flags as set)
  [ -n "${pool_flags[$latent]:-}" ] || pool_flags[$latent]=" ${spec#*=}"
done
for latent in "${!pool_flags[@]}"; do
  # shellcheck disable=SC2086  # flags are words on purpose
  $PY benchmarks/gpu_pretrain.py --arm "pool-$latent" --pool-only --workers $((WORKERS / ${#pool_flags[@]})) \
    --workdir "$WORK/pool-$latent" --out "$WORK/pool_out" "${common[@]}" ${pool_flags[$latent]} \
    > "$WORK/pool-$latent.log" 2>&1 &
done
wait
for latent in "${!pool_flags[@]}"; do
  [ -f "$WORK/pool-$latent/latent_pool.safetensors" ] || { echo "error: the $latent pool failed:"; tail -20 "$WORK/pool-$latent.log"; exit 1; }
  echo "$latent: $(grep -a -o "pool of.*" "$WORK/pool-$latent.log")"
done

minutes=$(awk -v left=$((BUDGET_S - JUDGE_S - ($(date +%s) - start))) 'BEGIN { printf "%.2f", (left - 30) / 60 }')
awk -v m="$minutes" 'BEGIN { exit !(m < 0.5) }' && { echo "error: the pools left $minutes min of BUDGET_S=$BUDGET_S to train: raise BUDGET_S or lower JUDGE_S" >&2; exit 1; }
echo "training budget per arm: $minutes min (arms side by side)"
for spec in "$@"; do
  name=${spec%%=*} flags=${spec#*=}
  mkdir -p "$WORK/$name"
  ln -sf "$WORK/pool-$(latent_of "$flags")/latent_pool.safetensors" "$WORK/$name/latent_pool.safetensors"
  # shellcheck disable=SC2086  # flags are words on purpose
  $PY benchmarks/gpu_pretrain.py --arm "$name" --start vae --workers 0 --workdir "$WORK/$name" --out "$OUT" \
    --minutes "$minutes" "${common[@]}" $flags > "$WORK/$name.log" 2>&1 &
done
wait
# Few files back (the device tool returns at most 8): the weights, one log, one JSON of the records.
records=()
for spec in "$@"; do
  name=${spec%%=*}
  { echo "== $name"; tr '\r' '\n' < "$WORK/$name.log" | grep -a -v "it/s\]$"; } >> "$OUT/session.log"
  if [ -f "$WORK/$name/$name.json" ]; then records+=("$WORK/$name/$name.json"); else
    echo "$name: no record; its log ends:"; tail -5 "$WORK/$name.log"; fi
  grep -a -E "ms/step|^seen|^heldout|Error|error" "$WORK/$name.log" | sed "s/^/$name: /"
done
[ ${#records[@]} -gt 0 ] && $PY -c 'import json, sys; out, *paths = sys.argv[1:]
json.dump({json.load(open(p))["arm"]: json.load(open(p)) for p in paths}, open(out, "w"), indent=1)' "$OUT/session.json" "${records[@]}"
echo "session took $(( $(date +%s) - start )) s"
