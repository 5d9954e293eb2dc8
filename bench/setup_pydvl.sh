#!/usr/bin/env bash
# Make pyDVL's own environment for the pyDVL comparison (python -m bench --only pydvl):
#   bash bench/setup_pydvl.sh [PYTHON]
# creates .venv-pydvl at the repository root (git-ignored) with PYTHON (default: python3, >= 3.9) and installs
# bench/requirements-pydvl.txt from PyPI (every version pinned: pyDVL 0.10.0 needs numpy < 2, which the
# project's environment does not have). Nothing is installed into the project's own .venv.
# Rerunning it is safe: an existing .venv-pydvl is reused and brought to the pinned versions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${1:-python3}"
VENV="$ROOT/.venv-pydvl"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup_pydvl.sh: no interpreter '$PYTHON' (give one: bash bench/setup_pydvl.sh /path/to/python3)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/bench/requirements-pydvl.txt"
"$VENV/bin/python" -W ignore -c "import pydvl, pydvl.valuation; print('pyDVL', pydvl.__version__, 'ready in $VENV')"
