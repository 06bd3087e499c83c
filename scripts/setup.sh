#!/usr/bin/env bash
# Creates .venv with modscope and its test tools. Idempotent: a second run only re-checks.
#
# torch is installed first, on its own, so that pip never resolves the plain `torch>=` requirement to a
# multi-GB CUDA build: a CPU wheel already on this machine (pip's find-links) wins; otherwise the CPU wheel
# index is used. Set MODSCOPE_TORCH_SPEC (e.g. "torch==2.5.1") or MODSCOPE_TORCH_INDEX to choose yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP=(-q --disable-pip-version-check)

[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  spec=${MODSCOPE_TORCH_SPEC:-}
  if [[ -n $spec ]]; then
    "$VENV/bin/pip" install "${PIP[@]}" "$spec"
  elif "$VENV/bin/pip" download -q --no-deps --no-index -d "$(mktemp -d)" "torch==2.13.0+cpu" >/dev/null 2>&1; then
    # A CPU wheel lies on this machine (pip's find-links): take it, its small dependencies from the index.
    "$VENV/bin/pip" install "${PIP[@]}" "torch==2.13.0+cpu"
  else
    "$VENV/bin/pip" install "${PIP[@]}" torch --index-url "${MODSCOPE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
fi
stamp=$VENV/.modscope-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  "$VENV/bin/pip" install "${PIP[@]}" -e ".[test]"
  touch "$stamp"
fi
