#!/usr/bin/env bash
# One device call for the fused Kronecker-sum stream (issue 5): kron_gpu.py (check, launch-setting sweep,
# layer steps for the 7 configurations with a split and the float16-autocast pair; ~2-4 min, much of it
# Triton compiling; the tuned launches are written right after the sweep, so a timeout in the steps
# loses only their last rows), then gpu.py run with the tuned launches, so the kron-triton rows enter
# kernels-gpu.md's verdicts (~3 min under --deadline).
#
# Here, first:   .venv/bin/python benchmarks/kernels/gpu.py plan          # -> out/kernels-gpu/plans.json
# Device call:   carry out/kernels-gpu; command: bash benchmarks/kernels/kron_session.sh; timeout_s 540
# Back here:     copy kernels-gpu-kron.{md,json} and kernels-gpu.{md,json} from files_at to benchmarks/results/
set -u
OUT=${OUT:-out/kron-session}
PLANS=${PLANS:-out/kernels-gpu/plans.json}
PY=${PY:-python3}
# A script test here: DEVICE=cpu SMOKE=--smoke BATCH=64 PY=.venv/bin/python TRITON_INTERPRET=1 PLANS=<smoke export>
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-}
BATCH=${BATCH:-8192}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 240 $PY benchmarks/kernels/kron_gpu.py --plans "$PLANS" --results "$OUT" --device "$DEVICE" --batch "$BATCH" \
    $SMOKE 2>&1 | tail -60
echo "kron_gpu rc=${PIPESTATUS[0]}"
args=()
[ -f "$OUT/kron-config.json" ] && args=(--kron-config "$OUT/kron-config.json")
timeout 280 $PY benchmarks/kernels/gpu.py run --plans "$PLANS" --results "$OUT" --compile 0 --deadline 150 \
    --device "$DEVICE" --batch "$BATCH" $SMOKE "${args[@]}" 2>&1 | grep -v '^{' | tail -40
echo "gpu rc=${PIPESTATUS[0]}"
date -u
