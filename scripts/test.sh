#!/usr/bin/env bash
# Run the whole test suite (creates or reuses .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
ruff check .
# One worker per core (tests pin torch to one thread each); pass -n 0 to run in this process.
# Arguments naming test files or folders replace the whole of tests/ (else pytest would run both).
target=(tests)
for arg in "$@"; do
    case "$arg" in tests/* | ./tests/*) target=() ;; esac
done
python -m pytest -n auto "${target[@]}" "$@"
