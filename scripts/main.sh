#!/usr/bin/env bash
# The main job (creates or reuses .venv):
#   1. plan every public benchmark instance into a plan cache (out/cache/plans.sqlite),
#   2. export the cache and re-load every plan from the export with cache_only (no search),
#   3. write a side-by-side report of tnplan, cotengra and opt_einsum (out/report/report.{md,html,json}).
# Usage: scripts/main.sh [INSTANCES_DIR] [extra `tnplan report` options]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
instances="${1:-$root/../shared/bench/instances}"
shift || true
out="$root/out"
mkdir -p "$out"
export TNPLAN_CACHE_DIR="$out/cache"
python -c "from tnplan.optimal import kernel_ready; kernel_ready(block=True)"  # compile once, before timing
for f in "$instances"/*/*.json; do
  tnplan plan "$f" --max-time 1 --json | python -c "import json, sys; r = json.load(sys.stdin); \
print(f\"planned {sys.argv[1]:<48} log10 flops {r['log10_flops']:8.4f}  cache {r['cache']}\")" "$(basename "$f")"
done
tnplan cache ls | tail -1
tnplan cache export "$out/plans.json"
TNPLAN_CACHE_DIR="$out/imported" tnplan cache import "$out/plans.json"
TNPLAN_CACHE_DIR="$out/imported" python - "$instances" <<'PY'
import sys
from pathlib import Path
import tnplan
files = sorted(Path(sys.argv[1]).glob("*/*.json"))
status = [tnplan.plan(tnplan.Network.from_json(f), max_time=1, cache_only=True).cache_status for f in files]
print(f"reloaded {status.count('hit')} of {len(files)} plans from the export without searching "
      f"({status.count('off')} networks of <= 3 tensors are enumerated, never cached)")
PY
tnplan report "$instances" --max-time 1 --methods tnplan,cotengra,opt_einsum-greedy,opt_einsum-auto-hq \
  --out "$out/report" "$@"
