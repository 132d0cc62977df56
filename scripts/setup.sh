#!/usr/bin/env bash
# Build the project's environment in .venv (idempotent): pinned torch first, then rcdm with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned, so nothing else pulls an unpinned (multi-GB) build; pyproject itself states ranges.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${RCDM_TORCH:-2.14.1}" "torchvision==${RCDM_TORCHVISION:-0.29.1}" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import rcdm_core, torch; print('rcdm environment ready: torch', torch.__version__)"
