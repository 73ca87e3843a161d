#!/usr/bin/env bash
# The main job (creates or reuses .venv): plan offline, train with cached plans only, report.
#   1. plan every generator segment of configs/digits-compressed.toml into out/cache/plans.sqlite
#      and export the cache to out/plans.json (the step for a machine with kahypar);
#   2. import the export into a fresh cache (as a GPU box would) and train the compressed model with
#      --cache-only (no search allowed), then the dense baseline, on the embedded 8x8 digits;
#   3. write out/report/report.{md,html}: accuracy vs compression, per-layer table, curves.
# About 1.5 minutes on 2 cores (1:16 on the Intel Xeon VM, 2026-11-29). Usage: scripts/main.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
out="$root/out"
rm -rf "$out/cache" "$out/imported" "$out/runs" "$out/report"
mkdir -p "$out"
python -c "from tnplan.optimal import kernel_ready; kernel_ready(block=True)"  # numba compiles once
adntn plan "$root/configs/digits-compressed.toml" --cache "$out/cache/plans.sqlite" --export "$out/plans.json"
TNPLAN_CACHE_DIR="$out/imported" tnplan cache import "$out/plans.json"
adntn train "$root/configs/digits-compressed.toml" --cache "$out/imported/plans.sqlite" --cache-only \
  --out "$out/runs/compressed"
adntn train "$root/configs/digits-dense.toml" --out "$out/runs/dense"
adntn report "$out/runs/compressed" "$out/runs/dense" --out "$out/report"
cat "$out/report/report.md"
