#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install the project into it.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TNPLAN_VENV:-$root/.venv}"
stamp="$venv/.installed-$(sha1sum "$root/pyproject.toml" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # TORCH_INDEX_URL: where a machine's pip would otherwise take PyPI's default (CUDA) Linux wheel, e.g.
  # https://download.pytorch.org/whl/cpu. Unset, pip uses its configured indexes and local wheels.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
