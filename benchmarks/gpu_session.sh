#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200): the kernels benchmark (issue 5), then the end-to-end
# compression grid (issue 6), inside LIMIT seconds, everything written to $OUT.
#
# Here, first (the GPU machine has no kahypar/cotengra and no network):
#   .venv/bin/python benchmarks/kernels/gpu.py plan          # -> out/kernels-gpu/plans.json
#   .venv/bin/python benchmarks/compression/run.py plan      # -> out/compression/plans.json
#   mkdir -p out/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz out/data/fashion-mnist/
# Then the device call, from the repository root:
#   carry: out/kernels-gpu/plans.json out/compression/plans.json out/data/fashion-mnist
#   command: bash benchmarks/gpu_session.sh
# Back here: out/.../runs.tgz unpacks into out/compression (tar xzf runs.tgz -C out/compression), then
# `run.py table` writes benchmarks/results/compression.*; kernels-gpu.{md,json} go to benchmarks/results/.
#
# The committed e2e table (H200, 2026-11-27) came from
#   PHASES=compression LIMIT=400 JOBS=16 EPOCHS=8 RUN_MAX=150 AMP=off bash benchmarks/gpu_session.sh
# (18 of 30 runs in 380 s; 16 jobs keep the GPU only ~25% busy, each run being launch-bound), then a
# second call on the warm machine with LIMIT=290 finished the other 12 from their checkpoints in 192 s.
#
# At most 8 files come back from $OUT, so the table is made here and the runs come back as one tarball.
set -u
OUT=${OUT:-out/gpu-session}
LIMIT=${LIMIT:-570}                 # seconds for the whole script
KERNELS_LIMIT=${KERNELS_LIMIT:-200} # hard cap of the kernels phase
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-10}
JOBS=${JOBS:-12}
RUN_MAX=${RUN_MAX:-240}             # no run starts later than this before the end (H200, 12 jobs: 150-340 s a run)
VARIANTS=${VARIANTS:-dense,ttn-77k,attn-77k,conv-ttn,ttn-10k}
AMP=${AMP:-bf16}                    # bf16 autocast, or off (fp32 with TF32 matmuls)
PY=${PY:-python3}
PHASES=${PHASES:-kernels,compression}  # drop one to give the other the whole call
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

case ",$PHASES," in *,kernels,*) ;; *) KERNELS_LIMIT=0 ;; esac
[ "$KERNELS_LIMIT" -gt 0 ] && {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    $PY -c "import sys, torch, numba; from numba import cuda; print(sys.version.split()[0], torch.__version__, numba.__version__, 'numba-cuda', cuda.is_available())"
    timeout -k 10 "$KERNELS_LIMIT" $PY benchmarks/kernels/gpu.py run --device "$DEVICE" \
        --plans out/kernels-gpu/plans.json --results "$OUT" --deadline $((KERNELS_LIMIT - 90))
    echo "kernels phase: rc $? at ${SECONDS} s"
} >"$OUT/kernels.log" 2>&1

left=$((LIMIT - SECONDS - 20))
case ",$PHASES," in *,compression,*) ;; *) left=0 ;; esac
deadline=$((left - RUN_MAX))
[ "$deadline" -lt 10 ] && deadline=10  # a short follow-up call (small LIMIT) still starts its resumed runs
[ "$left" -gt 0 ] && {
    echo "compression phase: ${left} s left at ${SECONDS} s"
    timeout -k 15 "$left" $PY benchmarks/compression/run.py run --device "$DEVICE" \
        --data-dir out/data/fashion-mnist --plans out/compression/plans.json --cache /tmp/compression-plans.sqlite \
        --cache-only --models vgg16,alexnet --variants "$VARIANTS" --epochs "$EPOCHS" --order variant \
        --jobs "$JOBS" --amp "$AMP" --deadline "$deadline" --no-table
    echo "compression phase: rc $? at ${SECONDS} s"
    nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv 2>&1
} >"$OUT/compression.log" 2>&1

# Checkpoints (and the .tmp of one cut off mid-save, ~1 GB for VGG-16) would push the tarball past 16 MB.
[ -d out/compression/e2e ] && tar czf "$OUT/runs.tgz" --exclude='checkpoint*' -C out/compression e2e
echo "done at ${SECONDS} s"
