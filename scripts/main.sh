#!/usr/bin/env bash
# The main job: plan every public benchmark instance with tnplan and the anchor planners,
# side by side at the same time budget, and print the comparison (creates or reuses .venv).
# Usage: scripts/main.sh [INSTANCES_DIR] [extra `tnplan compare` options]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
instances="${1:-$root/../shared/bench/instances}"
shift || true
python -c "from tnplan.optimal import kernel_ready; kernel_ready(block=True)"  # compile once, before timing
tnplan compare "$instances" --max-time 1 --methods tnplan,oe-greedy,oe-auto-hq,ctg-default "$@"
