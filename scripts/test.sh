#!/usr/bin/env bash
# Run the whole test suite (creates or reuses .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
ruff check .
python -m pytest tests "$@"
