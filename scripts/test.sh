#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
# The default run skips tests marked slow; SHED_TEST_ALL=1 runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MARK=(-m "not slow")
if [ "${SHED_TEST_ALL:-0}" = "1" ]; then MARK=(); fi
exec .venv/bin/python -m pytest -q "${MARK[@]}" "$@"
